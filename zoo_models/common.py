"""The toolkit every team's model shares: input normalisation, channel selection, the input-shape and weights-file
checks, the name of the main output, and the single-output view of a multi-output model.

A team module (``zoo_models/teams/*``) takes these from here, never from another team; graph surgery (copying
weights, replacing stems and heads, inserting layers) is `zoo_models.surgery`.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import keras
from keras import ops

from hpa_zoo.constants import MAIN_OUTPUT  # noqa: F401  (re-exported: the teams take it from here)
from hpa_zoo.errors import ConfigError, WeightsError


#: The channels a zoo model's input has: R, G, B, Y (`hpa_zoo.constants.CHANNELS`).
RGB_CHANNELS = (0, 1, 2)


def input_normalization(mean: Sequence[float], std: Sequence[float], name: str = "input_norm") -> keras.layers.Layer:
    """The first layer of a zoo model: a [0, 255] image -> ``(x / 255 - mean) / std`` per channel.

    A stock ``keras.layers.Normalization`` (serialisable without custom objects) with mean·255 and (std·255)², the
    same affine map. ``mean`` / ``std`` are in [0, 1] units, one value per input channel (Team 1's RGBY statistics,
    ImageNet's RGB statistics, Team 3's single value repeated).

    Args:
        mean, std: per-channel statistics, length C.
        name: layer name (the published models' graphs use ``input_norm``).
    Returns:
        a layer: (B, H, W, C) float/uint8-valued -> the same shape, compute dtype.
    """
    mean255 = [255.0 * float(m) for m in mean]
    var255 = [(255.0 * float(s)) ** 2 for s in std]
    return keras.layers.Normalization(axis=-1, mean=mean255, variance=var255, name=name)


@keras.saving.register_keras_serializable(package="hpa_zoo")
class ChannelSelect(keras.layers.Layer):
    """Keep the given channels of a channels-last tensor: (B, H, W, C) -> (B, H, W, len(channels)), same dtype.

    Teams 2 and 4 drop yellow inside the model (``channels=(0, 1, 2)``), so every zoo model takes RGBY input.
    """

    def __init__(self, channels: Sequence[int] = RGB_CHANNELS, **kwargs):
        super().__init__(**kwargs)
        self.channels = tuple(int(c) for c in channels)

    def build(self, input_shape):
        n = input_shape[-1]
        if n is not None and max(self.channels) >= n:
            raise ConfigError(f"ChannelSelect{self.channels}: the input has only {n} channels; "
                              f"zoo models take RGBY (4-channel) images")
        super().build(input_shape)

    def call(self, x):
        return ops.take(x, ops.convert_to_tensor(self.channels, "int32"), axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.channels))

    def get_config(self):
        return {**super().get_config(), "channels": list(self.channels)}


def check_input_shape(input_shape, *, arch: str, min_side: int = 32, channels: Optional[Sequence[int]] = None,
                      static: bool = False, default_side: Optional[int] = None) -> tuple:
    """Validate a builder's ``input_shape`` before any layer is built.

    Args:
        input_shape: (H, W, C); H and W may be None unless ``static``. None takes ``(default_side,
            default_side, 4)`` when ``default_side`` is given.
        arch: the architecture's name, for the message (e.g. ``"DenseNet121"``).
        min_side: the smallest H and W the trunk accepts (its total stride, or Inception's 75).
        channels: the channel counts allowed (e.g. ``(3, 4)``); None = any.
        static: H and W must be fixed numbers (attention pools need static sizes).
        default_side: see ``input_shape``.
    Returns:
        the shape as a tuple of 3.
    Raises:
        ConfigError: naming the shape and what the architecture needs.
    """
    if input_shape is None and default_side is not None:
        input_shape = (default_side, default_side, 4)
    shape = tuple(input_shape) if input_shape is not None else ()
    if len(shape) != 3 or (static and any(s is None for s in shape)):
        kind = "a fixed (H, W, C) (the attention pools need static sizes)" if static else "(H, W, C)"
        raise ConfigError(f"{arch}: input_shape must be {kind}, got {input_shape}")
    if channels is not None and shape[2] not in tuple(channels):
        allowed = " or ".join(f"(H, W, {c})" for c in channels)
        raise ConfigError(f"{arch}: input_shape must be {allowed} (4 = RGBY), got {input_shape}")
    if any(s is not None and s < min_side for s in shape[:2]):
        raise ConfigError(f"{arch}: input_shape {shape} is below the {min_side} px minimum: {arch} needs H, W >= "
                          f"{min_side}")
    return shape


def check_weights_file(path, *, note: str = "") -> str:
    """Fail before building: ``weights`` (not None / ``"imagenet"``) must be an existing ``.weights.h5`` file.

    Args:
        path: the ``weights`` argument.
        note: appended to the message (e.g. which published weights exist for the team).
    Returns:
        the path as a string.
    Raises:
        WeightsError: another suffix (with the hint for the published ONNX weights) or a missing file.
    """
    path = os.fspath(path)
    if not path.endswith(".weights.h5"):
        raise WeightsError(f"weights={path!r}: expected None, 'imagenet' or a '.weights.h5' file of this model "
                           f"(for published weights use hpa_zoo.load(name, weights='hpa')){note and ' ' + note}")
    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path!r} does not exist{note and '. ' + note}")
    return path


def load_weights_file(model: keras.Model, path, *, hint: str = "with the same num_classes", note: str = "") -> None:
    """``model.load_weights(path)`` with a checked file and Keras' errors as a `WeightsError` naming the file, the
    model's input and class count, and ``hint`` (how to build the model as when the weights were saved); ``note`` as in `check_weights_file`."""
    path = check_weights_file(path, note=note)
    try:
        model.load_weights(path)
    except Exception as exc:
        raise WeightsError(f"could not load {path!r} into {model.name!r} (input {model.input_shape}, "
                           f"{_class_count(model)} classes): {exc}. Build the model {hint} as when the weights "
                           f"were saved.") from exc


def _class_count(model) -> str:
    out = model.output
    if isinstance(out, dict):
        out = out.get(MAIN_OUTPUT, next(iter(out.values())))
    return str(out.shape[-1])


def main_output_model(model: keras.Model, output: str = MAIN_OUTPUT) -> keras.Model:
    """The single-output model of a multi-output Keras model: same input, only the ``output`` entry of its dict
    of outputs (Team 3's Inception-v3 trains ``{"logits", "aux_logits"}`` and predicts with ``logits``,
    docs/teams.md §3.2), sharing every layer and weight. A model with one output is returned unchanged.

    Args:
        model: functional keras.Model, (B, H, W, C) float32 -> logits (B, K) or a dict of them.
        output: the key of the output to keep.
    Returns:
        keras.Model (B, H, W, C) -> (B, K) float32 logits.
    Raises:
        ConfigError: a dict output without ``output``.
    """
    outputs = model.output
    if not isinstance(outputs, dict):
        return model
    if output not in outputs:
        raise ConfigError(f"model {model.name!r} has outputs {sorted(outputs)} but no {output!r}; hpa-zoo predicts "
                          f"with the {output!r} output of a multi-output model")
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs[output], name=model.name)
