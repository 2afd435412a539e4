"""The zoo layer: loading and saving models and presets (`models_api`, from the rows of `hpa_zoo.registry`),
published weights (`weights`) and their ONNX conversion (`onnx_convert`). Imports core, data, nn and zoo_models."""
