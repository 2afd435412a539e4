"""The augmentation layer: RGBY-safe image transforms as tf graph ops (`transforms`), the AutoAugment policy
machinery (`policy`) and the stored policies (`policies/*.json`). Imports only the core and `hpa_zoo.data`."""
