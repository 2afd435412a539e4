"""The augmentation layer: RGBY-safe image transforms as tf graph ops (`transforms`), the AutoAugment policy
machinery (`policy`), the stored policies (`policies/*.json`) and the keras.ops augmentation that runs on the
accelerator (`device`: D4, Team 1's random-scale crop). Imports only the core and `hpa_zoo.data`."""
