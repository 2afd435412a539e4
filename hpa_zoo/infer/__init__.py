"""The inference layer: TTA, thresholds, prediction (Kaggle/TFDS test data and the user's own images), ensembling,
export (Keras / SavedModel / ONNX / bioimage.io), ONNX runtime, and explanations (Grad-CAM, UMAP).
Imports core, data, augment, nn, zoo and the shared parts of zoo_models; never the training layer."""
