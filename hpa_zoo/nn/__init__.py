"""hpa_zoo.nn."""
