"""Independent plain-PyTorch reference models used by the tests (no torchvision, no hpa_zoo imports)."""
