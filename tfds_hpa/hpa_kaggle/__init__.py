"""The `hpa_kaggle` TFDS dataset (folder-style builder)."""
