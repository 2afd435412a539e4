"""Team 3 — pudae (Park Jinmo), 3rd place: the models (teams.md §3.1, §3.2, §3.4).

Three final models, all RGBY with a 4-channel stem whose yellow filter starts as a copy of the ImageNet red filter:

* ``AttentionInceptionV3`` at 1024 px: Inception-v3 trunk, class-wise spatial-softmax attention head
  (`zoo_models.attention`) on ``mixed10``; for training an auxiliary attention head on ``mixed7`` (loss
  main + 0.4·aux, in `zoo_models.teams.team3_recipe`);
* ``Attention(se_resnext50_32x4d)`` at 1024 px: the same head on the last SE-ResNeXt50 stage;
* ``resnet34`` at 512 px: global average pool -> Linear(512 -> 28), no dropout.

Normalisation is the model's first layer (``input_norm``): per-image per-channel z-score for the 1024 models,
(x − 127.5)/255 for ResNet34. The training recipe (loss, Adam, SWA, augmentation policy, TTA, thresholds) lives in
`zoo_models.teams.team3_recipe`.

Deviations (also in the registry descriptions): Keras' ImageNet InceptionV3 weights are not torchvision's; the
ResNet34 / SE-ResNeXt50 ImageNet weights are the PyTorch checkpoints themselves, which the user downloads
(`zoo_models.backbones.resnet.IMAGENET_URLS`). No HPA-trained Team 3 weights are public.
"""
from __future__ import annotations

import os
import re
import warnings

import keras
from keras import ops

from hpa_zoo.constants import NUM_CLASSES
from hpa_zoo.errors import ConfigError, WeightsError
from zoo_models.attention import attention_head
from zoo_models.backbones import resnet as resnet_backbones
from zoo_models.teams.team1_bestfitting import rgby_normalization

# ---------------------------------------------------------------------------------------------- constants
#: teams.md §3.1: input sides of the final models.
INPUT_SIZE_1024 = 1024
INPUT_SIZE_512 = 512
#: teams.md §3.2: every stem is a new Conv(4 -> C); channels 0-2 take the RGB weights, Y takes a copy of red.
STEM_RULE = "copy_red"

#: teams.md §3.2: AttentionInceptionV3: main head on Mixed_7c (Keras ``mixed10``, 30×30×2048 at 1024 px,
#: attention_size 30), auxiliary head on Mixed_6e (Keras ``mixed7``, 62×62×768, aux_attention_size 62).
INCEPTION_FEATURE, INCEPTION_ATTENTION_SIZE = "mixed10", 30
INCEPTION_AUX_FEATURE, INCEPTION_AUX_ATTENTION_SIZE = "mixed7", 62
#: teams.md §3.2: Attention(se_resnext50_32x4d): attention_size 32 (the 32×32×2048 last stage at 1024 px).
SE_RESNEXT_FEATURE, SE_RESNEXT_ATTENTION_SIZE = "layer4", 32
#: Output names; the recipe trains {logits, aux_logits} with loss L(logits) + 0.4·L(aux_logits) (teams.md §3.2).
MAIN_OUTPUT, AUX_OUTPUT = "logits", "aux_logits"

#: teams.md §3.4: the 1024 models: per-image per-channel (x − mean_c)/(std_c + 1e-7) over H×W.
ZSCORE_EPS = 1e-7
#: teams.md §3.4: resnet34: (x − 127.5)/255, i.e. (x/255 − 0.5)/1 in [0, 1] units.
RESNET34_MEAN, RESNET34_STD = 0.5, 1.0

#: Stem convs (registry ``first_conv``). The Inception names are made canonical (`_canonical_inception_names`):
#: the first conv is always ``conv2d`` however many models the session has built.
INCEPTION_FIRST_CONV = "conv2d"
SE_RESNEXT_FIRST_CONV = resnet_backbones.FIRST_CONV["se_resnext50_32x4d"]
RESNET34_FIRST_CONV = resnet_backbones.FIRST_CONV["resnet34"]


# ---------------------------------------------------------------------------------------------- normalisation
@keras.saving.register_keras_serializable(package="hpa_zoo")
class PerImageStandardization(keras.layers.Layer):
    """teams.md §3.4: ``(x − mean_c) / (std_c + eps)`` per image and channel over H×W (population std).

    Input (B, H, W, C) in [0, 255]; output (B, H, W, C) float32 (also under mixed precision: the statistics of
    a 1024² image need float32). No weights.
    """

    def __init__(self, eps: float = ZSCORE_EPS, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.eps = float(eps)

    def call(self, x):
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(x - mean), axis=(1, 2), keepdims=True))
        return (x - mean) / (std + self.eps)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}


# ---------------------------------------------------------------------------------------------- models
def build_team3_attention_inceptionv3_1024(num_classes: int = NUM_CLASSES, input_shape=None, weights=None,
                                           imagenet_weights: str = "imagenet", with_aux: bool = False,
                                           name: str = "team3_attention_inceptionv3_1024") -> keras.Model:
    """pudae's ``AttentionInceptionV3`` (teams.md §3.2): z-score -> InceptionV3 -> attention head on ``mixed10``.

    Graph: ``image`` -> ``input_norm`` (`PerImageStandardization`) -> Keras InceptionV3 trunk (canonical Keras
    names ``conv2d`` ... ``mixed10``) -> ``attention_pool`` (AdaptiveAvgPool to 30 unless already 30×30) ->
    ``attention_class_conv`` / ``attention_att_conv`` -> ``logits``; with ``with_aux`` also ``mixed7`` ->
    ``aux_attention_*`` (pool to 62) -> ``aux_logits``.

    Args:
        num_classes: logits per image.
        input_shape: (H, W, C), default (1024, 1024, 4); H, W >= 75 (InceptionV3's minimum), fixed (the
            adaptive pools need a static size).
        weights: None (random), ``"imagenet"`` (Keras' ImageNet InceptionV3, stem widened by copying the red
            filter; heads random), or a ``.weights.h5`` saved from a model built with the same ``with_aux``.
        imagenet_weights: ``"imagenet"`` (Keras download) or a local ``.weights.h5``/``.h5`` of a 3-channel
            ``InceptionV3(include_top=False)``.
        with_aux: the training model: outputs ``{"logits": (B, K), "aux_logits": (B, K)}``. Without it (inference)
            one output ``logits``. `drop_aux_head` turns the first into the second with the same weights.
        name: Keras model name (the registry name).

    Returns:
        keras.Model: (B, H, W, C) float32 in [0, 255] -> float32 logits (B, num_classes) (or the dict above).
    """
    shape = _shape(input_shape, INPUT_SIZE_1024, minimum=75, arch="InceptionV3")
    inputs = keras.Input(shape=shape, name="image")
    x = PerImageStandardization(name="input_norm")(inputs)
    with warnings.catch_warnings():  # "usually expects 1 or 3 input channels": 4 is intended
        warnings.simplefilter("ignore", UserWarning)
        trunk = keras.applications.InceptionV3(include_top=False, weights=None, input_tensor=x)
    logits = attention_head(trunk.get_layer(INCEPTION_FEATURE).output, num_classes,
                            attention_size=INCEPTION_ATTENTION_SIZE, name="attention", output_name=MAIN_OUTPUT)
    outputs = logits
    if with_aux:
        aux = attention_head(trunk.get_layer(INCEPTION_AUX_FEATURE).output, num_classes,
                             attention_size=INCEPTION_AUX_ATTENTION_SIZE, name="aux_attention",
                             output_name=AUX_OUTPUT)
        outputs = {MAIN_OUTPUT: logits, AUX_OUTPUT: aux}
    model = _canonical_inception_names(keras.Model(inputs, outputs, name=name))
    if weights == "imagenet":
        from zoo_models import surgery

        src = surgery.imagenet_source(keras.applications.InceptionV3, shape, imagenet_weights=imagenet_weights)
        trunk_model = keras.Model(_single_input(model), model.get_layer(INCEPTION_FEATURE).output)
        surgery.transplant_weights(src, trunk_model, first_conv=INCEPTION_FIRST_CONV, rule=STEM_RULE, match="order")
    elif weights is not None:
        _load_weights_file(model, weights, hint="with the same with_aux and num_classes")
    return model


def build_team3_attention_se_resnext50_1024(num_classes: int = NUM_CLASSES, input_shape=None, weights=None,
                                            imagenet_weights=None, name: str = "team3_attention_se_resnext50_1024"
                                            ) -> keras.Model:
    """pudae's ``Attention(se_resnext50_32x4d)`` (teams.md §3.2): z-score -> SE-ResNeXt50 -> attention head (32).

    Graph: ``image`` -> ``input_norm`` -> `zoo_models.backbones.resnet.se_resnext50_32x4d` layers (Cadene names,
    ``layer0_conv1`` ... ``layer4``) -> ``attention_pool`` (to 32×32 unless already) -> ``attention_class_conv`` /
    ``attention_att_conv`` -> ``logits``.

    Args:
        num_classes: logits per image.
        input_shape: (H, W, C), default (1024, 1024, 4); H, W >= 32, fixed.
        weights: None, ``"imagenet"`` (the Cadene PyTorch checkpoint at ``imagenet_weights``, stem widened by
            copying the red filter), or a ``.weights.h5`` of this model.
        imagenet_weights: path of ``se_resnext50_32x4d-a260b3a4.pth`` (or an ``.npz`` of its state_dict).
        name: Keras model name.

    Returns:
        keras.Model: (B, H, W, C) float32 in [0, 255] -> logits (B, num_classes) float32.
    """
    shape = _shape(input_shape, INPUT_SIZE_1024, minimum=32, arch="SE-ResNeXt50")
    inputs = keras.Input(shape=shape, name="image")
    x = PerImageStandardization(name="input_norm")(inputs)
    trunk = resnet_backbones.se_resnext50_32x4d(input_tensor=x)
    logits = attention_head(trunk.get_layer(SE_RESNEXT_FEATURE).output, num_classes,
                            attention_size=SE_RESNEXT_ATTENTION_SIZE, name="attention", output_name=MAIN_OUTPUT)
    model = keras.Model(inputs, logits, name=name)
    _init_resnet_weights(model, "se_resnext50_32x4d", weights, imagenet_weights)
    return model


def build_team3_resnet34_512(num_classes: int = NUM_CLASSES, input_shape=None, weights=None, imagenet_weights=None,
                             name: str = "team3_resnet34_512") -> keras.Model:
    """pudae's resnet34 (teams.md §3.2): (x − 127.5)/255 -> ResNet34 -> ``avgpool`` (GAP, 512) -> ``logits``.

    Args:
        num_classes: logits per image.
        input_shape: (H, W, C), default (512, 512, 4); H, W >= 32.
        weights: None, ``"imagenet"`` (the torchvision checkpoint at ``imagenet_weights``, red-copy stem), or a
            ``.weights.h5`` of this model.
        imagenet_weights: path of ``resnet34-*.pth`` (or an ``.npz`` of its state_dict).
        name: Keras model name.

    Returns:
        keras.Model: (B, H, W, C) float32 in [0, 255] -> logits (B, num_classes) float32; ``avgpool`` is the
        512-d feature.
    """
    shape = _shape(input_shape, INPUT_SIZE_512, minimum=32, arch="ResNet34")
    inputs = keras.Input(shape=shape, name="image")
    x = rgby_normalization(mean=(RESNET34_MEAN,) * shape[-1], std=(RESNET34_STD,) * shape[-1])(inputs)
    trunk = resnet_backbones.resnet34(input_tensor=x, pooling="avg")
    logits = keras.layers.Dense(num_classes, dtype="float32", name=MAIN_OUTPUT)(trunk.output)
    model = keras.Model(inputs, logits, name=name)
    _init_resnet_weights(model, "resnet34", weights, imagenet_weights)
    return model


def drop_aux_head(model: keras.Model) -> keras.Model:
    """The inference model of a ``with_aux=True`` Inception model: same input, output ``logits`` only, sharing
    every layer (and weight) of ``model``. A model without an aux head is returned unchanged.

    Returns keras.Model (B, H, W, C) -> logits (B, K) float32.
    """
    from hpa_zoo.infer.predict import main_output_model  # the one implementation (training and predict use it too)

    return main_output_model(model, MAIN_OUTPUT)


# ---------------------------------------------------------------------------------------------- helpers
def _single_input(model):
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def _shape(input_shape, default_side: int, *, minimum: int, arch: str) -> tuple:
    shape = tuple(input_shape) if input_shape is not None else (default_side, default_side, 4)
    if len(shape) != 3 or any(s is None for s in shape):
        raise ConfigError(f"input_shape must be a fixed (H, W, C) (the attention pools need static sizes), "
                          f"got {input_shape}")
    if min(shape[:2]) < minimum:
        raise ConfigError(f"input_shape {shape}: {arch} needs H, W >= {minimum}")
    return shape


#: Keras' auto-numbered layer names (``conv2d_57``) depend on how many layers the session has built.
_AUTO_NAME = re.compile(r"(conv2d|batch_normalization|activation|max_pooling2d|average_pooling2d|concatenate)(_\d+)?")


def _canonical_inception_names(model: keras.Model) -> keras.Model:
    """A fresh copy of ``model`` whose auto-numbered layers are renamed by order of appearance (``conv2d``,
    ``conv2d_1``, ...): the names of a first build in a fresh session, whatever was built before."""
    counts: dict[str, int] = {}

    def rename(layer):
        config = layer.get_config()
        m = _AUTO_NAME.fullmatch(layer.name)
        if m:
            k = counts.get(m.group(1), 0)
            counts[m.group(1)] = k + 1
            config["name"] = m.group(1) if k == 0 else f"{m.group(1)}_{k}"
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=rename)


def _init_resnet_weights(model, arch: str, weights, imagenet_weights) -> None:
    if weights is None:
        return
    if weights == "imagenet":
        if imagenet_weights is None:
            raise WeightsError(f"{model.name}(weights='imagenet') needs imagenet_weights=<path of the PyTorch "
                               f"checkpoint>; download {resnet_backbones.IMAGENET_URLS[arch]}")
        resnet_backbones.transplant_imagenet(model, arch, imagenet_weights, rule=STEM_RULE)
        return
    _load_weights_file(model, weights, hint="with the same num_classes")


def _load_weights_file(model, path, *, hint: str) -> None:
    path = os.fspath(path)
    if not path.endswith(".weights.h5") or not os.path.isfile(path):
        raise WeightsError(f"weights={path!r}: expected None, 'imagenet' or an existing '.weights.h5' file of "
                           f"{model.name!r}. No HPA-trained Team 3 weights are published.")
    try:
        model.load_weights(path)
    except Exception as exc:
        raise WeightsError(f"could not load {path!r} into {model.name!r}: {exc}. Build the model {hint} as "
                           f"when the weights were saved.") from exc
