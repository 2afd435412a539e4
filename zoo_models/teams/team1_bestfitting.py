"""Team 1 — bestfitting (Shubin Dai), 1st place: DenseNet121 on RGBY, focal + Lovász + hard-log loss, max-TTA.

The method section, in order: constants (each citing `docs/teams.md`), the model (normalisation inside,
4-channel stem with the red filter copied for yellow, optional extra 2×2 max-pool, concat-pool dropout head), the
learning-rate schedule, and the recipe (data maps, loss, optimiser, TTA, thresholds) for `hpa_zoo.train.trainer`.

Deviations from the PyTorch original (also in the recipe ``notes``): Keras' ImageNet DenseNet121 weights are not
torchvision's, and Keras' BatchNormalization epsilon is 1.001e-5 in the trunk (torch 1e-5) — teams.md §1.2. Every
BatchNorm updates its running statistics at torch's rate (Keras momentum 0.9, not the trunk's 0.99; teams.md §6).
"""
from __future__ import annotations

import functools
import warnings

import keras
import numpy as np
from keras import ops

from hpa_zoo.constants import KAGGLE_TRAIN_COUNTS, KAGGLE_TRAIN_SIZE, NUM_CLASSES, PUBLIC_LB_RATIOS
from hpa_zoo.errors import ConfigError
from hpa_zoo.recipe import DeviceAugment, Recipe, ThresholdConfig, TTAConfig
from zoo_models import surgery
from zoo_models.common import check_input_shape, check_weights_file, input_normalization, load_weights_file

# ---------------------------------------------------------------------------------------------- constants
#: teams.md §1.2: per-channel RGBY mean/std of the Kaggle train+test PNGs, in [0, 1] units (image / 255).
RGBY_MEAN = (0.074598, 0.050630, 0.050891, 0.076287)
RGBY_STD = (0.122813, 0.085745, 0.129882, 0.119411)

#: teams.md §1.2: the stem is `features.conv0` (Keras: ``conv1_conv``), yellow initialised as a copy of red.
FIRST_CONV = "conv1_conv"
STEM_RULE = "copy_red"

#: teams.md §1.2 head table: concat(avg, max) 2048 -> BN -> Dropout .5 -> Linear 1024 -> ReLU -> BN -> Dropout .5
#: -> logit Linear 28. The 1024-d output of the second dropout is the exported "feature".
HEAD_HIDDEN = 1024
HEAD_DROPOUT = 0.5
FEATURE_LAYER = "head_dropout2"
CLASSIFIER = "logits"

#: teams.md §1.1: final model 1536 -> crop 1024, batch 36, Adam45/45; the 512 model 768 -> crop 512, batch 48, Adam55.
IMAGE_SIZE_1024, INPUT_SIZE_1024, BATCH_1024, EPOCHS_1024 = 1536, 1024, 36, 45
IMAGE_SIZE_512, INPUT_SIZE_512, BATCH_512, EPOCHS_512 = 768, 512, 48, 55

#: teams.md §1.5: step LR by 1-based epoch; [30, 15, 7.5, 3, 1] x 1e-5 for [25, 5, 5, 5, 5] epochs (Adam45) and
#: [25, 10, 10, 5, 5] epochs (Adam55). A boundary b means "epochs 1..b use the previous value".
LR_VALUES = (3e-4, 1.5e-4, 7.5e-5, 3e-5, 1e-5)
ADAM45_BOUNDARIES = (25, 30, 35, 40)
ADAM55_BOUNDARIES = (25, 35, 45, 50)
#: teams.md §1.5: Adam with default betas, no weight decay, gradient-norm clipping at 1.0.
CLIPNORM = 1.0

#: teams.md §1.6: TTA seeds 0..3 x 8 dihedral transforms; seed 0 = whole image, seeds 1-3 = random-scale crops;
#: probabilities combined by element-wise max.
TTA_SEEDS = (0, 1, 2, 3)

#: teams.md §1.6: thresholds match the public-LB class ratios (§0.4); the 0.01 placeholders are replaced by the
#: train-set label frequency. Float64 (28,).
LB_RATIOS = np.where(PUBLIC_LB_RATIOS == 0.01, KAGGLE_TRAIN_COUNTS / KAGGLE_TRAIN_SIZE, PUBLIC_LB_RATIOS)

NOTES = ("Keras ImageNet DenseNet121 weights (not torchvision's); trunk BN epsilon 1.001e-5 (torch 1e-5); BN "
         "momentum 0.9 everywhere (torch's 0.1). "
         "Fewer epochs than the team's scale the LR boundaries proportionally (EpochStepSchedule). "
         "Team 1 trained FP32 on 4 GPUs; the batch is the global batch.")


# ---------------------------------------------------------------------------------------------- model
def build_densenet121(num_classes: int = NUM_CLASSES, input_shape=(512, 512, 4), weights=None, large: bool = False,
                      imagenet_weights: str = "imagenet", name: str | None = None) -> keras.Model:
    """Team 1's DenseNet121 classifier (``class_densenet121[_large]_dropout``, teams.md §1.2).

    Graph: image [0, 255] -> ``input_norm`` -> Keras DenseNet121 trunk (Keras layer names, ``conv1_conv`` ... ``bn``,
    ``relu``; ``large`` inserts ``extra_pool`` = MaxPooling2D(2, 2) right after the stem pool ``pool1``) ->
    ``head_gap``/``head_gmp`` -> ``head_concat`` (avg first) -> ``head_bn1`` -> ``head_dropout1`` -> ``head_fc1``
    (1024) -> ``head_relu`` -> ``head_bn2`` -> ``head_dropout2`` (the 1024-d feature) -> ``logits``.
    Output stride 32 (64 for ``large``): 512 px gives a 16×16×1024 map, as does 1024 px with ``large``.

    Args:
        num_classes: logits per image.
        input_shape: (H, W, C) with C = 4 (RGBY) usually; H, W >= 32 (>= 64 for ``large``), or None.
        weights: None (random init), ``"imagenet"`` (Keras ImageNet DenseNet121, stem widened with the red-copy
            rule via `zoo_models.surgery`; the head stays random), or a path to a ``.weights.h5`` of this model.
        large: the ``large`` variant (extra 2×2 max-pool).
        imagenet_weights: where ``weights="imagenet"`` comes from: ``"imagenet"`` (download) or a local
            ``.weights.h5``/``.h5`` file of a 3-channel ``DenseNet121(include_top=False)``.
        name: the Keras model name (the registry builders pass the registry name, which `hpa_zoo.zoo.models_api`
            uses to find the row again).

    Returns:
        keras.Model: input ``image`` (B, H, W, C) float32 in [0, 255]; output logits (B, num_classes) float32
        (also under a mixed precision policy).
    """
    input_shape = check_input_shape(input_shape, arch="DenseNet121 large" if large else "DenseNet121",
                                    min_side=64 if large else 32)
    if weights not in (None, "imagenet"):
        check_weights_file(weights)
    inputs = keras.Input(shape=input_shape, name="image")
    x = input_normalization(RGBY_MEAN, RGBY_STD)(inputs)
    with warnings.catch_warnings():  # "usually expects 1 or 3 input channels": 4 is intended
        warnings.simplefilter("ignore", UserWarning)
        trunk = keras.applications.DenseNet121(include_top=False, weights=None, input_tensor=x)
    if large:
        trunk = surgery.insert_after(trunk, "pool1", lambda t: keras.layers.MaxPooling2D(2, 2, name="extra_pool")(t))
    features = _dropout_head(trunk.output)
    logits = keras.layers.Dense(num_classes, dtype="float32", name=CLASSIFIER)(features)
    name = name or ("densenet121_large_team1" if large else "densenet121_team1")
    model = keras.Model(trunk.inputs[0], logits, name=name)  # a single tensor, not a list: no structure warning
    surgery.set_batchnorm_momentum(model, surgery.TORCH_BN_MOMENTUM)  # PyTorch's running-stat rate, teams.md §6

    if weights is None:
        return model
    if weights == "imagenet":
        src = surgery.imagenet_source(keras.applications.DenseNet121, (input_shape[0] or 224, input_shape[1] or 224),
                                      imagenet_weights=imagenet_weights)
        surgery.transplant_weights(src, model, first_conv=FIRST_CONV, rule=STEM_RULE)
        return model
    load_weights_file(model, weights, hint="with the same num_classes/large")
    return model


def _dropout_head(x):
    """teams.md §1.2 head: (B, h, w, 1024) trunk map -> (B, 1024) feature (output of ``head_dropout2``)."""
    avg = keras.layers.GlobalAveragePooling2D(name="head_gap")(x)
    mx = keras.layers.GlobalMaxPooling2D(name="head_gmp")(x)
    x = keras.layers.Concatenate(name="head_concat")([avg, mx])  # avg first
    # torch BatchNorm1d defaults: eps 1e-5, momentum 0.1 (Keras momentum 0.9 is the same running-average rate)
    x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="head_bn1")(x)
    x = keras.layers.Dropout(HEAD_DROPOUT, name="head_dropout1")(x)
    x = keras.layers.Dense(HEAD_HIDDEN, name="head_fc1")(x)
    x = keras.layers.ReLU(name="head_relu")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="head_bn2")(x)
    return keras.layers.Dropout(HEAD_DROPOUT, name=FEATURE_LAYER)(x)


def build_team1_densenet121_512(num_classes: int = NUM_CLASSES, input_shape=None, weights=None, **kw) -> keras.Model:
    """``class_densenet121_dropout`` (768 -> crop 512, teams.md §1.1); default input (512, 512, 4).

    See `build_densenet121` for arguments and outputs (logits (B, num_classes) float32).
    """
    kw.setdefault("name", "team1_densenet121_512")
    return build_densenet121(num_classes, input_shape or (INPUT_SIZE_512, INPUT_SIZE_512, 4), weights,
                             large=False, **kw)


def build_team1_densenet121_1024(num_classes: int = NUM_CLASSES, input_shape=None, weights=None, **kw) -> keras.Model:
    """``class_densenet121_large_dropout``, the final model (1536 -> crop 1024, extra 2×2 max-pool, teams.md §1.1);
    default input (1024, 1024, 4).

    See `build_densenet121` for arguments and outputs (logits (B, num_classes) float32).
    """
    kw.setdefault("name", "team1_densenet121_1024")
    return build_densenet121(num_classes, input_shape or (INPUT_SIZE_1024, INPUT_SIZE_1024, 4), weights,
                             large=True, **kw)


# ---------------------------------------------------------------------------------------------- schedule
@keras.saving.register_keras_serializable(package="hpa_zoo")
class EpochStepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Step learning rate by epoch (teams.md §1.5, ``layers/scheduler.py::Adam45``), evaluated per optimiser step.

    1-based epoch ``e`` (0-based step ``s``: ``e = s // steps_per_epoch + 1``) uses ``values[k]`` where ``k`` is
    the number of boundaries ``b`` with ``e > b``. Adam45: boundaries (25, 30, 35, 40), values 3e-4 ... 1e-5.

    Shorter runs: when ``epochs < team_epochs`` every boundary becomes ``floor(b · epochs / team_epochs + 0.5)``
    so the phases keep their proportions (9 epochs of Adam45 -> boundaries (5, 6, 7, 8)). Very short runs may merge
    phases. Longer runs keep the team's boundaries (the last value continues).

    Args:
        steps_per_epoch: optimiser steps per epoch (> 0).
        epochs: epochs the user trains for.
        boundaries: the team's epoch boundaries (increasing).
        values: len(boundaries) + 1 learning rates.
        team_epochs: the team's epoch count the boundaries refer to.
    """

    def __init__(self, steps_per_epoch: int, epochs: int, boundaries=ADAM45_BOUNDARIES, values=LR_VALUES,
                 team_epochs: int = EPOCHS_1024):
        if steps_per_epoch < 1 or epochs < 1:
            raise ConfigError(f"EpochStepSchedule needs steps_per_epoch >= 1 and epochs >= 1, got "
                              f"{steps_per_epoch}, {epochs}")
        if len(values) != len(boundaries) + 1:
            raise ConfigError(f"EpochStepSchedule: {len(values)} values for {len(boundaries)} boundaries; need one more")
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.boundaries = tuple(int(b) for b in boundaries)
        self.values = tuple(float(v) for v in values)
        self.team_epochs = int(team_epochs)

    @property
    def epoch_boundaries(self) -> tuple[int, ...]:
        """The boundaries actually used (scaled to ``epochs`` when shorter than the team's run)."""
        if self.epochs >= self.team_epochs:
            return self.boundaries
        return tuple(int(np.floor(b * self.epochs / self.team_epochs + 0.5)) for b in self.boundaries)

    def __call__(self, step):
        """step: scalar int/float tensor (0-based optimiser iteration) -> float32 scalar learning rate."""
        epoch0 = ops.floor_divide(ops.cast(step, "int64"), self.steps_per_epoch)  # 0-based epoch
        k = ops.zeros((), "int32")
        for b in self.epoch_boundaries:  # 1-based e > b  <=>  0-based epoch0 >= b
            k = k + ops.cast(ops.greater_equal(epoch0, b), "int32")
        return ops.take(ops.convert_to_tensor(self.values, "float32"), k)

    def get_config(self) -> dict:
        return {"steps_per_epoch": self.steps_per_epoch, "epochs": self.epochs, "boundaries": list(self.boundaries),
                "values": list(self.values), "team_epochs": self.team_epochs}


def make_optimizer(steps_per_epoch: int, epochs: int, *, boundaries=ADAM45_BOUNDARIES,
                   team_epochs: int = EPOCHS_1024) -> keras.optimizers.Optimizer:
    """teams.md §1.5: Adam (default betas, no weight decay), clipnorm 1.0, `EpochStepSchedule`."""
    schedule = EpochStepSchedule(steps_per_epoch, epochs, boundaries, LR_VALUES, team_epochs)
    return keras.optimizers.Adam(learning_rate=schedule, clipnorm=CLIPNORM)


# ---------------------------------------------------------------------------------------------- data maps
def train_map(example: dict, seed, *, image_size: int, input_size: int):
    """teams.md §1.4 training path: resize to ``image_size``, random-scale square crop (side ~ U(input, image))
    resized to ``input_size`` (cv2 ``INTER_LINEAR`` as the team's ``read_crop_img``: `hpa_zoo.data.cv_ops.merge_resize`),
    one of the 8 dihedral transforms. Nothing else.

    An example holding the stored RGB+Y JPEG pair instead of ``image`` (`hpa_zoo.data.rgby_jpeg.ENCODED_KEY`,
    stored at ``image_size``; ``Recipe.train_map_reads_jpeg``) gets the same crop window from the same seed, and
    only that window is decoded (``tf.image.decode_and_crop_jpeg``): the same output as decoding it first.

    Args:
        example: ``{"image": uint8 (H, W, 4), "multi_hot": uint8 (28,), ...}``, or ``{ENCODED_KEY: string (2,),
            "multi_hot": ...}`` with the image stored at ``image_size``.
        seed: int tensor (2,), the stateless per-example seed.

    Returns:
        (image float32 (input_size, input_size, 4) in [0, 255], multi_hot float32 (28,)).
    """
    import tensorflow as tf

    from hpa_zoo.data import cv_ops, image_ops, rgby_jpeg

    crop_seed, d4_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    if rgby_jpeg.ENCODED_KEY in example:
        parts = example[rgby_jpeg.ENCODED_KEY]
        hw = rgby_jpeg.checked_stored_shape(parts, image_size, "team1 train_map")
        window = image_ops.random_scale_crop_box(hw, input_size, crop_seed)
        crop = rgby_jpeg.decode_rgb_y(parts, window)  # [rgb, y] of the window only
    else:
        image = image_ops.resize(example["image"], image_size)
        top, left, side = image_ops.random_scale_crop_box(tf.shape(image)[:2], input_size, crop_seed)
        crop = [image[top:top + side, left:left + side]]
    # Joined and resized by OpenCV: on one core 5x cheaper than tf.concat + tf.image.resize (hpa_zoo.data.cv_ops).
    image = cv_ops.merge_resize(crop, input_size)
    image = image_ops.random_d4(image, d4_seed)
    return tf.cast(image, tf.float32), tf.cast(example["multi_hot"], tf.float32)


def eval_map(example: dict, *, input_size: int):
    """teams.md §1.4 validation path: the whole image resized to ``input_size``.

    Returns (image float32 (input_size, input_size, 4) in [0, 255], multi_hot float32 (28,)).
    """
    from hpa_zoo.data import image_ops

    return image_ops.resized_pair(example, input_size)


def device_augment(image_size: int, input_size: int) -> DeviceAugment:
    """teams.md §1.4's training path split for ``--augment-on device``: the host decodes to uint8 at
    ``image_size`` (`hpa_zoo.augment.device.device_host_map`), the accelerator crops, resizes to ``input_size``
    and applies the D4 transform (`hpa_zoo.augment.device.RandomScaleCropD4`, the same crop distribution)."""
    from hpa_zoo.augment import device

    return DeviceAugment(make_layer=functools.partial(device.RandomScaleCropD4, input_size),
                         host_map=functools.partial(device.device_host_map, image_size=image_size))


# ---------------------------------------------------------------------------------------------- recipe
def make_loss():
    """teams.md §1.3: 0.5·focal + 0.5·symmetric Lovász + 0.5·hard-negative log loss (`hpa_zoo.nn.losses`)."""
    from hpa_zoo.nn.losses import BestfittingLoss

    return BestfittingLoss()


def make_metrics() -> list:
    """teams.md §1.3: checkpoints are picked on the validation focal loss (logged as ``val_focal``)."""
    from hpa_zoo.nn.losses import make_focal_metric

    return [make_focal_metric()]


def make_recipe(model_name: str | None = None, *, large: bool = True, **overrides) -> Recipe:
    """Team 1's recipe for the 1024 (``large=True``, final) or the 512 model; ``overrides`` replace fields.

    Args:
        model_name: a registry name (``"team1_densenet121_512"`` selects the 512 recipe); overrides ``large``.
        large: without ``model_name``: the final 1536 -> 1024 recipe (True) or the 768 -> 512 one.
        overrides: any `Recipe` field; ``image_size`` / ``input_size`` also rebuild the data maps and ``epochs``
            is what `hpa_zoo.train.trainer` passes to ``make_optimizer`` (the schedule scales to it).

    Returns:
        `hpa_zoo.recipe.Recipe`.
    """
    if model_name is not None:
        large = not model_name.endswith("_512")
    if large:
        image_size, input_size, batch, epochs, bounds = (IMAGE_SIZE_1024, INPUT_SIZE_1024, BATCH_1024, EPOCHS_1024,
                                                        ADAM45_BOUNDARIES)
    else:
        image_size, input_size, batch, epochs, bounds = (IMAGE_SIZE_512, INPUT_SIZE_512, BATCH_512, EPOCHS_512,
                                                        ADAM55_BOUNDARIES)
    image_size = overrides.pop("image_size", image_size)
    input_size = overrides.pop("input_size", input_size)
    fields = dict(
        name="team1_1024" if large else "team1_512",
        image_size=image_size,
        input_size=input_size,
        batch_size=batch,
        epochs=epochs,
        make_loss=make_loss,
        make_optimizer=functools.partial(make_optimizer, boundaries=bounds, team_epochs=epochs),
        train_map=functools.partial(train_map, image_size=image_size, input_size=input_size),
        eval_map=functools.partial(eval_map, input_size=input_size),
        monitor="val_focal",
        monitor_mode="min",
        tta=TTAConfig("d4", n_random_crops=len(TTA_SEEDS) - 1, aggregate="max"),
        thresholds=ThresholdConfig("lb_ratio_match", force_top=True, kwargs={"ratios": tuple(LB_RATIOS)}),
        make_metrics=make_metrics,
        train_map_reads_jpeg=True,  # train_map decodes only the crop window of a stored RGB+Y JPEG
        device_augment=device_augment(image_size, input_size),
        notes=NOTES,
    )
    fields.update(overrides)
    return Recipe(**fields)


#: The final model's recipe (1536 -> 1024, batch 36, Adam45) and the 512 model's (768 -> 512, batch 48, Adam55).
RECIPE_1024 = make_recipe(large=True)
RECIPE_512 = make_recipe(large=False)
RECIPE = RECIPE_1024
