"""hpa_zoo.data."""
