"""Team 3 — pudae (Park Jinmo), 3rd place: attention Inception-v3 / SE-ResNeXt50 at 1024 px, ResNet34 at 512 px,
focal loss averaged over all elements, constant-LR Adam with gradient accumulation, the searched AutoAugment
policy, SWA over the last 10 epochs, D4 mean-TTA and proportion-matched thresholds (teams.md §3).

The method section, in order: the models (§3.1, §3.2, §3.4), then the recipe: the loss (with Inception-v3's
auxiliary head), the optimiser, the data maps, `make_recipe` for `hpa_zoo.train.trainer` (which carries out the
declared SWA window, `Recipe.swa_last_n`), and the final blend (`blend_team3`).

Three final models, all RGBY with a 4-channel stem whose yellow filter starts as a copy of the ImageNet red filter:

* ``AttentionInceptionV3`` at 1024 px: Inception-v3 trunk, class-wise spatial-softmax attention head
  (`zoo_models.attention`) on ``mixed10``; for training an auxiliary attention head on ``mixed7`` (loss
  main + 0.4·aux, in `zoo_models.teams.team3_pudae`);
* ``Attention(se_resnext50_32x4d)`` at 1024 px: the same head on the last SE-ResNeXt50 stage;
* ``resnet34`` at 512 px: global average pool -> Linear(512 -> 28), no dropout.

Normalisation is the model's first layer (``input_norm``): per-image per-channel z-score for the 1024 models,
(x − 127.5)/255 for ResNet34, so the data maps produce [0, 255] float32 images.

Deviations (also in the registry descriptions): Keras' ImageNet InceptionV3 weights are not torchvision's; the
ResNet34 / SE-ResNeXt50 ImageNet weights are the PyTorch checkpoints themselves, which the user downloads
(`zoo_models.backbones.resnet.IMAGENET_URLS`). No HPA-trained Team 3 weights are public. Keras'
``gradient_accumulation_steps`` applies the *mean* of the accumulated gradients (PyTorch sums them unless the loss
is divided; Adam is invariant to that scale up to its epsilon). Thresholds are fitted on the trainer's validation
split, pudae used a separate hold-out (``test_val``, §3.4); pass held-out probabilities to
`hpa_zoo.infer.thresholds.fit_thresholds` to do the same.
"""
from __future__ import annotations

import functools
import re
import warnings
from typing import Any, NamedTuple

import keras
from keras import ops

from hpa_zoo.constants import NUM_CLASSES
from hpa_zoo.errors import ConfigError, WeightsError
from hpa_zoo.recipe import BlendConfig, Recipe, ThresholdConfig, TTAConfig
from zoo_models import surgery
from zoo_models.attention import attention_head
from zoo_models.backbones import resnet as resnet_backbones
from zoo_models.common import MAIN_OUTPUT, check_input_shape, input_normalization, load_weights_file, main_output_model

# ---------------------------------------------------------------------------------------------- constants
#: docs/teams.md §3: pudae published code, no trained weights.
NO_WEIGHTS = "No HPA-trained Team 3 weights are published."
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
#: The auxiliary output; the recipe trains {logits, aux_logits} with loss L(logits) + 0.4·L(aux_logits) (§3.2).
AUX_OUTPUT = "aux_logits"

#: teams.md §3.4: the 1024 models: per-image per-channel (x − mean_c)/(std_c + 1e-7) over H×W.
ZSCORE_EPS = 1e-7
#: teams.md §3.4: resnet34: (x − 127.5)/255, i.e. (x/255 − 0.5)/1 in [0, 1] units.
RESNET34_MEAN, RESNET34_STD = 0.5, 1.0

#: Stem convs (registry ``first_conv``). The Inception names are made canonical (`zoo_models.surgery.canonical_layer_names`):
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
    shape = check_input_shape(input_shape, default_side=INPUT_SIZE_1024, min_side=75, arch="InceptionV3", static=True)
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
    model = surgery.canonical_layer_names(keras.Model(inputs, outputs, name=name), _AUTO_NAME)
    surgery.set_batchnorm_momentum(model, surgery.TORCH_BN_MOMENTUM)  # PyTorch's running-stat rate, teams.md §6
    if weights == "imagenet":
        src = surgery.imagenet_source(keras.applications.InceptionV3, shape, imagenet_weights=imagenet_weights)
        trunk_model = keras.Model(_single_input(model), model.get_layer(INCEPTION_FEATURE).output)
        surgery.transplant_weights(src, trunk_model, first_conv=INCEPTION_FIRST_CONV, rule=STEM_RULE, match="order")
    elif weights is not None:
        load_weights_file(model, weights, hint="with the same with_aux and num_classes", note=NO_WEIGHTS)
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
    shape = check_input_shape(input_shape, default_side=INPUT_SIZE_1024, min_side=32, arch="SE-ResNeXt50", static=True)
    inputs = keras.Input(shape=shape, name="image")
    x = PerImageStandardization(name="input_norm")(inputs)
    trunk = resnet_backbones.se_resnext50_32x4d(input_tensor=x)
    logits = attention_head(trunk.get_layer(SE_RESNEXT_FEATURE).output, num_classes,
                            attention_size=SE_RESNEXT_ATTENTION_SIZE, name="attention", output_name=MAIN_OUTPUT)
    model = keras.Model(inputs, logits, name=name)
    surgery.set_batchnorm_momentum(model, surgery.TORCH_BN_MOMENTUM)  # already the backbone's; the head's too
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
    shape = check_input_shape(input_shape, default_side=INPUT_SIZE_512, min_side=32, arch="ResNet34", static=True)
    inputs = keras.Input(shape=shape, name="image")
    x = input_normalization((RESNET34_MEAN,) * shape[-1], (RESNET34_STD,) * shape[-1])(inputs)
    trunk = resnet_backbones.resnet34(input_tensor=x, pooling="avg")
    logits = keras.layers.Dense(num_classes, dtype="float32", name=MAIN_OUTPUT)(trunk.output)
    model = keras.Model(inputs, logits, name=name)
    surgery.set_batchnorm_momentum(model, surgery.TORCH_BN_MOMENTUM)  # already the backbone's; the head's too
    _init_resnet_weights(model, "resnet34", weights, imagenet_weights)
    return model


def drop_aux_head(model: keras.Model) -> keras.Model:
    """The inference model of a ``with_aux=True`` Inception model: same input, output ``logits`` only, sharing
    every layer (and weight) of ``model``. A model without an aux head is returned unchanged.

    Returns keras.Model (B, H, W, C) -> logits (B, K) float32.
    """
    return main_output_model(model, MAIN_OUTPUT)


# ---------------------------------------------------------------------------------------------- helpers
def _single_input(model):
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


#: Keras' auto-numbered layer names (``conv2d_57``) depend on how many layers the session has built.
_AUTO_NAME = re.compile(r"(conv2d|batch_normalization|activation|max_pooling2d|average_pooling2d|concatenate)(_\d+)?")


def _init_resnet_weights(model, arch: str, weights, imagenet_weights) -> None:
    if weights is None:
        return
    if weights == "imagenet":
        if imagenet_weights is None:
            raise WeightsError(f"{model.name}(weights='imagenet') needs imagenet_weights=<path of the PyTorch "
                               f"checkpoint>; download {resnet_backbones.IMAGENET_URLS[arch]}")
        resnet_backbones.transplant_imagenet(model, arch, imagenet_weights, rule=STEM_RULE)
        return
    load_weights_file(model, weights, hint="with the same num_classes", note=NO_WEIGHTS)


# ============================================================================================== the recipe
# ---------------------------------------------------------------------------------------------- recipe constants
#: teams.md §3.3: binary focal loss, γ = 2, no α, **mean over all B×28 elements**.
FOCAL_GAMMA = 2.0
FOCAL_REDUCTION = "mean"
#: teams.md §3.2: Inception-v3 loss = L(main) + 0.4·L(aux); the aux head is an attention head on Mixed_6e.
AUX_LOSS_WEIGHT = 0.4

#: teams.md §3.3: Adam, lr 5e-4 constant (scheduler "none"), β (0.9, 0.999), no weight decay.
LEARNING_RATE = 5e-4
BETA_1, BETA_2 = 0.9, 0.999

#: teams.md §3.4: every model reads the 512-px RGBY PNGs; the 1024 models upsample them (bilinear Resize).
IMAGE_SIZE = 512

class ModelFacts(NamedTuple):
    """teams.md §3.1, one final model: builder, input side, per-step batch, gradient accumulation, epochs
    (ResNet34: epochs 0..40 = 41), and whether it has Inception-v3's auxiliary output."""
    builder: str  # the builder function below
    input_size: int
    batch_size: int
    grad_accum_steps: int
    epochs: int
    aux: bool = False


MODELS: dict[str, ModelFacts] = {
    "team3_attention_inceptionv3_1024": ModelFacts("build_team3_attention_inceptionv3_1024", 1024, 24, 2, 28, True),
    "team3_attention_se_resnext50_1024": ModelFacts("build_team3_attention_se_resnext50_1024", 1024, 8, 4, 23),
    "team3_resnet34_512": ModelFacts("build_team3_resnet34_512", 512, 32, 1, 41),
}

#: teams.md §3.5: the final training policy = the 25 sub-policies of ``pudae:data/best_policy.data``.
DEFAULT_POLICY = "team3"
#: teams.md §3.3: SWA = equal-weight average of the last 10 epoch checkpoints, then BN recalibration.
SWA_LAST_N = 10

#: teams.md §3.1 / §3.6: blend = weighted mean of probabilities; each resnet34 fold 1/5, inception-v3 1,
#: se-resnext50 1.
BLEND_WEIGHTS: dict[str, float] = {
    "team3_resnet34_512": 1.0 / 5.0,
    "team3_attention_inceptionv3_1024": 1.0,
    "team3_attention_se_resnext50_1024": 1.0,
}

NOTES = ("BN momentum 0.9 in every model (torch's 0.1; the Keras InceptionV3 trunk is built at 0.99). "
         "Gradient accumulation averages the k gradients (Keras) where PyTorch sums them; Adam is scale-invariant "
         "up to epsilon. The 1024 models augment the 512 image and then upsample it (teams.md §3.4). Thresholds: "
         "proportion matching on whatever split they are fitted on (pudae: the test_val hold-out). hpa_zoo.train.trainer "
         "checkpoints every epoch and makes the preset the SWA model (BatchNorm recalibrated on the training split "
         "with the validation transform); the best-on-val_logits_loss checkpoint is kept beside it.")


# ---------------------------------------------------------------------------------------------- loss
def make_loss(aux: bool = False):
    """teams.md §3.3: focal loss γ=2 averaged over all elements (`hpa_zoo.nn.losses.FocalLoss`, mode ``"mean"``).

    With ``aux`` (Inception-v3, §3.2) a dict ``{"logits": loss, "aux_logits": loss}``, to be combined with
    ``loss_weights={"logits": 1.0, "aux_logits": 0.4}`` (`Recipe.loss_weights`; `hpa_zoo.train.trainer.train` passes
    them to ``compile`` and feeds every output the same multi-hot target). Each loss maps
    (y_true (B, 28), logits (B, 28)) to a float32 scalar.
    """
    from hpa_zoo.nn.losses import FocalLoss

    if not aux:
        return FocalLoss(gamma=FOCAL_GAMMA, mode=FOCAL_REDUCTION, name="focal_mean")
    return {key: FocalLoss(gamma=FOCAL_GAMMA, mode=FOCAL_REDUCTION, name=f"{key}_focal_mean")
            for key in (MAIN_OUTPUT, AUX_OUTPUT)}


# ---------------------------------------------------------------------------------------------- optimiser
def make_optimizer(steps_per_epoch: int, epochs: int, *, grad_accum_steps: int = 1):
    """teams.md §3.3: Adam(lr 5e-4 constant, β 0.9/0.999, no weight decay), stepping every `grad_accum_steps`
    batches (Keras ``gradient_accumulation_steps``). `steps_per_epoch`/`epochs` are unused: the LR is constant.

    Returns ``keras.optimizers.Adam``.
    """
    import keras

    del steps_per_epoch, epochs
    if int(grad_accum_steps) < 1:
        raise ConfigError(f"grad_accum_steps={grad_accum_steps}: use 1 (no accumulation) or more")
    return keras.optimizers.Adam(learning_rate=LEARNING_RATE, beta_1=BETA_1, beta_2=BETA_2,
                                 gradient_accumulation_steps=int(grad_accum_steps) if grad_accum_steps > 1 else None)


# ---------------------------------------------------------------------------------------------- data maps
def train_map(example: dict, seed, *, policy, input_size: int):
    """teams.md §3.5 training transform: base D4 (RandomRotate90, Flip, Transpose, p=0.5 each) + ONE sub-policy
    of `policy` chosen uniformly (`hpa_zoo.augment.autoaugment.apply_policy`), then Resize to ``input_size`` (the 1024 models
    upsample the 512 image, §3.4). Normalisation is inside the model.

    Args:
        example: ``{"image": uint8 (H, W, 4), "multi_hot": uint8 (28,), ...}`` (H = W = the recipe's image_size).
        seed: int (2,) tensor, the stateless per-example seed.
        policy: list of `hpa_zoo.augment.autoaugment.SubPolicy`.
    Returns:
        (image float32 (input_size, input_size, 4) in [0, 255], multi_hot float32 (28,)).
    """
    import tensorflow as tf

    from hpa_zoo.augment import autoaugment
    from hpa_zoo.data import image_ops

    image = autoaugment.apply_policy(example["image"], policy, seed)
    image = image_ops.resize(image, input_size)
    return tf.cast(image, tf.float32), tf.cast(example["multi_hot"], tf.float32)


# ---------------------------------------------------------------------------------------------- recipe
def make_recipe(model_name: str = "team3_attention_inceptionv3_1024", *, policy: Any = DEFAULT_POLICY,
                **overrides) -> Recipe:
    """Team 3's recipe for one of `MODELS`; ``overrides`` replace `Recipe` fields.

    Args:
        model_name: ``"team3_attention_inceptionv3_1024"``, ``"team3_attention_se_resnext50_1024"`` or
            ``"team3_resnet34_512"``.
        policy: the AutoAugment policy: a packaged name (``"team3"``, pudae's final 25 sub-policies), a policy
            JSON path (e.g. written by ``hpa-zoo autoaugment-search``), or a list of `hpa_zoo.augment.autoaugment.SubPolicy`.
        overrides: any `Recipe` field; ``image_size`` / ``input_size`` also rebuild the data maps,
            ``grad_accum_steps`` the optimiser factory.
    Returns:
        `hpa_zoo.recipe.Recipe` (Inception-v3: ``loss_weights={"logits": 1.0, "aux_logits": 0.4}`` and a dict loss).
    Raises:
        ConfigError: unknown model name, or a bad policy file.
    """
    from hpa_zoo.augment import autoaugment
    from hpa_zoo.data import image_ops

    if model_name not in MODELS:
        raise ConfigError(f"make_recipe: {model_name!r} is not a Team 3 model; use one of {sorted(MODELS)}")
    facts = MODELS[model_name]
    sub_policies = list(policy) if isinstance(policy, (list, tuple)) else autoaugment.load_policy(policy)
    image_size = int(overrides.pop("image_size", IMAGE_SIZE))
    input_size = int(overrides.pop("input_size", facts.input_size))
    grad_accum = int(overrides.pop("grad_accum_steps", facts.grad_accum_steps))
    fields = dict(
        name=model_name.replace("_attention", ""),
        image_size=image_size,
        input_size=input_size,
        batch_size=facts.batch_size,
        epochs=facts.epochs,
        make_loss=functools.partial(make_loss, aux=facts.aux),
        make_optimizer=functools.partial(make_optimizer, grad_accum_steps=grad_accum),
        train_map=functools.partial(train_map, policy=sub_policies, input_size=input_size),
        # teams.md §3.3/§3.6: validation = Resize to the input size only
        eval_map=functools.partial(image_ops.resized_pair, size=input_size),
        monitor="val_loss",
        monitor_mode="min",
        tta=TTAConfig("d4", aggregate="mean"),  # teams.md §3.6: 8 D4 transforms, mean of probabilities
        thresholds=ThresholdConfig("proportion_match"),  # teams.md §3.6: on a held-out split, no forced argmax
        grad_accum_steps=grad_accum,
        swa_last_n=SWA_LAST_N,  # teams.md §3.3: the trainer averages the last 10 epochs and recalibrates BN
        # teams.md §3.4: every input is the whole (augmented) image resized to the input side, never a crop
        input_is_resized_image=True,
        blend=BlendConfig("weighted_mean", {"weights": BLEND_WEIGHTS}),  # teams.md §3.1, §3.6
        loss_weights={MAIN_OUTPUT: 1.0, AUX_OUTPUT: AUX_LOSS_WEIGHT} if facts.aux else None,
        notes=NOTES,
    )
    fields.update(overrides)
    return Recipe(**fields)
