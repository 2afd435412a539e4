"""The zoo layer: the one registry table (`registry`), loading and saving models and presets (`models_api`),
published weights (`weights`) and their ONNX conversion (`onnx_convert`). Imports core, data, nn and zoo_models."""
