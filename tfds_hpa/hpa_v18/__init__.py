"""The `hpa_v18` TFDS dataset (folder-style builder)."""
