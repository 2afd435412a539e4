"""Global weighted average pooling (GWAP), Dmytro Poplavskiy's pooling in Team 4's models (teams.md §4.2).

For a feature map x (B, H, W, C): crop ``crop`` pixels off every border, score each position with a 1×1 conv
(C -> 1, with bias), turn the score into a positive weight ``w = exp(scale · sigmoid(score))`` (scale 3, so
weights lie in [1, e³]: every position counts, salient ones up to ~20× more), normalise the weights over the
positions and return the weighted average of the features:

    out[b, c] = Σ_ij w[b, i, j] · x[b, i, j, c] / Σ_ij w[b, i, j]

The layer works in keras.ops (TensorFlow, JAX, PyTorch backends) and is registered for serialisation.
"""
from __future__ import annotations

import keras
from keras import ops

from hpa_zoo.errors import ConfigError

#: teams.md §4.2 (Dmytro): GWAP = 1×1 conv -> exp(3·sigmoid) weights, spatially normalised; borders cropped by 2 px.
GWAP_SCALE = 3.0
GWAP_BORDER = 2


@keras.saving.register_keras_serializable(package="hpa_zoo")
class GlobalWeightedAveragePooling2D(keras.layers.Layer):
    """GWAP (module docstring): (B, H, W, C) channels-last -> (B, C), in the compute dtype.

    Args:
        crop: border pixels removed on each side before pooling (Dmytro: 2). The map must be larger than
            2·crop in both dimensions.
        scale: the factor inside the exponent (Dmytro: 3).
        kwargs: `keras.layers.Layer` arguments (``name``, ``dtype``).

    Weights: ``score`` — a 1×1 ``Conv2D(1)`` (kernel (1, 1, C, 1), bias (1,)), created in ``build``.
    """

    def __init__(self, crop: int = GWAP_BORDER, scale: float = GWAP_SCALE, **kwargs):
        super().__init__(**kwargs)
        if int(crop) < 0:
            raise ConfigError(f"GlobalWeightedAveragePooling2D: crop={crop} must be >= 0")
        self.crop = int(crop)
        self.scale = float(scale)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ConfigError(f"GlobalWeightedAveragePooling2D expects (B, H, W, C) maps, got {input_shape}")
        for side in input_shape[1:3]:
            if side is not None and side <= 2 * self.crop:
                raise ConfigError(f"GlobalWeightedAveragePooling2D: a {input_shape[1]}x{input_shape[2]} map "
                                  f"cannot lose {self.crop} px per border; use a larger input or crop=0")
        self.score = keras.layers.Conv2D(1, 1, name="score", dtype=self.dtype_policy)
        self.score.build((*input_shape[:3], input_shape[3]))
        super().build(input_shape)

    def weights_map(self, x):
        """Normalised pooling weights of a (cropped) map: (B, h, w, 1), summing to 1 over h, w."""
        w = ops.exp(self.scale * ops.sigmoid(self.score(x)))
        return w / ops.sum(w, axis=(1, 2), keepdims=True)

    def call(self, x):
        if self.crop:
            x = x[:, self.crop:-self.crop, self.crop:-self.crop, :]
        return ops.sum(self.weights_map(x) * x, axis=(1, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[3])

    def get_config(self):
        return {**super().get_config(), "crop": self.crop, "scale": self.scale}
