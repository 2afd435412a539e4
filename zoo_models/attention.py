"""Team 3's (pudae) class-wise spatial-softmax attention head (teams.md §3.2, ``pudae:models/model_factory.py``).

For a feature map F (B, h, w, C_feat), K classes:

* optional ``AdaptiveAvgPool2d(attention_size)`` first (PyTorch bins, so it may also *up*-sample a small map);
* ``logits_map = Conv1×1(C_feat -> K)(F)``                       (B, h, w, K)
* ``att = softmax over the h·w positions of Conv1×1(C_feat -> K)(F)``, separately for every class
* ``logits[b, k] = Σ_{h,w} logits_map[b, h, w, k] · att[b, h, w, k]``   (B, K)

i.e. every class looks at the positions where *its* attention map is high. The head is float32 end to end (also
under a mixed-precision policy): the two 1×1 convs are tiny and the softmax over ~1000 positions wants float32.

Quirk of the original (teams.md §3.2): AttentionInceptionV3 decides whether to pool the *main* features by
comparing their side with ``aux_attention_size`` (62), not ``attention_size`` (30); both only differ when the
mixed10 side is 62 (≈ 2000 px inputs), so hpa-zoo pools whenever the side differs from ``attention_size``.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from hpa_zoo.errors import ConfigError


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """PyTorch ``adaptive_avg_pool`` along one axis as a matrix: row i averages input [floor(i·n/m), ceil((i+1)·n/m)).

    Returns float32 (out_size, in_size); rows sum to 1.
    """
    m = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -(-((i + 1) * in_size) // out_size)
        m[i, start:end] = 1.0 / (end - start)
    return m


@keras.saving.register_keras_serializable(package="hpa_zoo")
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """PyTorch's ``AdaptiveAvgPool2d(output_size)`` in keras.ops (no weights; static H, W needed).

    Input (B, H, W, C) -> output (B, out_h, out_w, C), same dtype. Up-sampling (out > in) repeats positions, as
    PyTorch does.
    """

    def __init__(self, output_size, **kwargs):
        super().__init__(**kwargs)
        self.output_size = (int(output_size), int(output_size)) if np.isscalar(output_size) else \
            tuple(int(s) for s in output_size)

    def build(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        if h is None or w is None:
            raise ConfigError(f"{self.name}: adaptive pooling to {self.output_size} needs a static feature-map size; "
                              f"build the model with a fixed input_shape (H, W, C) or attention_size=None")
        self._ph = adaptive_pool_matrix(h, self.output_size[0])
        self._pw = adaptive_pool_matrix(w, self.output_size[1])

    def call(self, x):
        ph = ops.convert_to_tensor(self._ph, dtype=x.dtype)
        pw = ops.convert_to_tensor(self._pw, dtype=x.dtype)
        x = ops.einsum("oh,bhwc->bowc", ph, x)
        return ops.einsum("pw,bowc->bopc", pw, x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "output_size": list(self.output_size)}


@keras.saving.register_keras_serializable(package="hpa_zoo")
class ClassAttentionPooling(keras.layers.Layer):
    """Σ over positions of ``logits_map · softmax_positions(att_logits)``, per class (no weights).

    Inputs ``[logits_map, att_logits]``, both (B, h, w, K); output (B, K) in the layer's dtype (float32 by default).
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        logits_map, att_logits = inputs
        k = ops.shape(logits_map)[-1]
        logits_map = ops.reshape(logits_map, (ops.shape(logits_map)[0], -1, k))
        att = ops.softmax(ops.reshape(att_logits, (ops.shape(att_logits)[0], -1, k)), axis=1)
        return ops.sum(logits_map * att, axis=1)

    def compute_output_shape(self, input_shapes):
        return (input_shapes[0][0], input_shapes[0][-1])


def attention_head(features, num_classes: int, *, attention_size: int | None = None, name: str = "attention",
                   output_name: str | None = None):
    """Apply the class-wise spatial-softmax attention head to a Keras feature tensor.

    Layers (float32): ``{name}_pool`` (only when ``attention_size`` is set and differs from the map's side),
    ``{name}_class_conv`` (logits map) and ``{name}_att_conv`` (attention logits), both Conv2D 1×1 with bias, and
    ``output_name`` (default ``{name}_logits``), the `ClassAttentionPooling`.

    Args:
        features: Keras tensor (B, h, w, C_feat), any float dtype.
        num_classes: K.
        attention_size: pool the map to (attention_size, attention_size) first (teams.md §3.2), or None.
        name: prefix of the head's layer names.
        output_name: name of the output layer (Team 3's main head: ``"logits"``).

    Returns:
        Keras tensor (B, K) float32, the class logits.
    """
    if num_classes < 1:
        raise ConfigError(f"attention_head: num_classes must be >= 1, got {num_classes}")
    side = tuple(features.shape[1:3])
    if attention_size is not None and side != (attention_size, attention_size):
        features = AdaptiveAveragePooling2D(attention_size, dtype="float32", name=f"{name}_pool")(features)
    logits_map = keras.layers.Conv2D(num_classes, 1, dtype="float32", name=f"{name}_class_conv")(features)
    att_logits = keras.layers.Conv2D(num_classes, 1, dtype="float32", name=f"{name}_att_conv")(features)
    return ClassAttentionPooling(name=output_name or f"{name}_logits")([logits_map, att_logits])
