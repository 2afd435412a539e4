"""Team 2 — WAIR (Jun Lan), 2nd place: ImageNet DenseNets on RGB, class-weighted BCE, rare-class oversampling.

The method section, in order: constants (each citing `docs/teams.md` §2), the model (the RGBY input's
yellow plane dropped inside the model, ImageNet normalisation, DenseNet121/169 trunk -> ReLU -> GAP -> Dense 28),
the loss, the oversampling rules v2/v3/v4 (the recipe's epoch sampler), the schedule (Adamax with cosine warm
restarts, then Adam-amsgrad at 1e-5 and 1e-6), the data maps, TTA and thresholds, the recipe for
`hpa_zoo.train.trainer`, and the team's blend.

Deviations (also in the recipe ``notes``): `hpa_zoo.train.trainer` runs one optimiser per run, so the two Adam-amsgrad
phases (epochs 19-23, a new optimiser every epoch in the original) run as the tail of `Team2Schedule` on the same
Adamax optimiser; `make_amsgrad_optimizer` builds the team's optimiser for a run that restarts from the phase-1
checkpoint. The HueSaturationValue member of the colour OneOf is left out (an RGB op on RGBY input). Keras'
ImageNet DenseNet weights are not torchvision's.
"""
from __future__ import annotations

import functools
from typing import Sequence

import keras
import numpy as np
from keras import ops

from hpa_zoo.constants import NUM_CLASSES, is_kaggle_id
from hpa_zoo.errors import ConfigError
from hpa_zoo.recipe import BlendConfig, Recipe, ThresholdConfig, TTAConfig
from zoo_models import surgery
from zoo_models.common import (ChannelSelect, check_input_shape, check_weights_file, input_normalization,
                               load_weights_file)

# ---------------------------------------------------------------------------------------------- constants
#: teams.md §2.2: the input is RGB; ``dataset.py`` keeps ``image[:, :, 0:3]`` = R, G, B (yellow dropped).
RGB_CHANNELS = (0, 1, 2)
#: teams.md §2.2: ImageNet mean/std on image / 255.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: teams.md §2.2: torchvision ``.features`` -> ReLU -> AdaptiveAvgPool(1) -> Linear(1024 | 1664 -> 28); no dropout.
#: Keras' DenseNet trunk already ends in BN ``bn`` + ReLU ``relu``, the ReLU of the original head.
TRUNKS = {121: keras.applications.DenseNet121, 169: keras.applications.DenseNet169}
FEATURES = {121: 1024, 169: 1664}
FIRST_CONV = "conv1_conv"
FEATURE_LAYER = "head_gap"
CLASSIFIER = "logits"

#: teams.md §2.4: 512 x 512, batch 48 (4 GPUs, FP32), 24 epochs (§2.5).
IMAGE_SIZE, BATCH_SIZE, EPOCHS = 512, 48, 24

#: teams.md §2.4: rare-class oversampling by list duplication; the first rule that matches an image's labels wins.
#: (class, copies) in rule order. "×10" is read as "the image appears 10 times in the list".
OVERSAMPLING_RULES: dict[str, tuple[tuple[int, int], ...]] = {
    "v2": ((27, 10), (15, 10), (10, 5), (9, 5), (8, 4), (20, 3), (17, 3), (24, 2), (26, 2)),
    "v3": ((27, 10), (15, 10), (10, 4), (9, 4), (8, 4), (20, 3), (17, 3), (16, 2), (18, 2), (22, 2), (26, 2)),
}
OVERSAMPLING_RULES["v4"] = OVERSAMPLING_RULES["v3"]
#: teams.md §2.4: v4 (the "_v5" models) also drops external images labelled only {0}, only {25} or only {0, 25}.
V4_DROPPED_EXTERNAL_LABELS = ((0,), (25,), (0, 25))
#: teams.md §2.1, §2.4: DenseNet169 and 4 of the 7 models are "_v5" models, which use rule v4 (the recipes' default).
DEFAULT_OVERSAMPLING = "v4"

#: teams.md §2.5: Adamax(lr 1e-3, wd 0) with WarmRestart cosine (T_max 10, eta_min 1e-5, T_mult 2), stepped per
#: epoch, epochs 0-18; then a new Adam(amsgrad, lr 1e-5, wd 1e-5) every epoch for epochs 19-20, lr 1e-6 for 21-23.
ADAMAX_LR, ETA_MIN, T_MAX, T_MULT = 1e-3, 1e-5, 10, 2
AMSGRAD_PHASES = ((19, 1e-5), (21, 1e-6))  # (first 0-based epoch, lr)
AMSGRAD_WEIGHT_DECAY = 1e-5

#: teams.md §2.4 augmentation: OneOf[gamma 60-120, brightness .2, contrast .2] (OneOf p .5), Flip p .75,
#: ShiftScaleRotate(.2, .2, 180) p 1, OneOf[GridDistortion(5, .3), ElasticTransform(1, 50, 50)] p .5.
COLOUR_P, FLIP_P, DISTORT_P = 0.5, 0.75, 0.5
GAMMA_LIMIT, BRIGHTNESS_LIMIT, CONTRAST_LIMIT = (60, 120), 0.2, 0.2
SSR_SHIFT, SSR_SCALE, SSR_ROTATE = 0.2, 0.2, 180
GRID_STEPS, GRID_LIMIT = 5, 0.3
ELASTIC_ALPHA, ELASTIC_SIGMA, ELASTIC_ALPHA_AFFINE = 1.0, 50.0, 50.0

#: teams.md §2.6: 5 random passes of [Flip p .75, ShiftScaleRotate(.1, .1, 90)], mean of probabilities.
TTA = TTAConfig("random_flip_ssr", n_random_passes=5, aggregate="mean")
#: teams.md §2.6: 0.7 x the per-class F1-optimal OOF threshold; empty rows retry 0.6x, then 0.5x.
THRESHOLDS = ThresholdConfig("f1_optimal_scaled", kwargs={"scale": 0.7, "fallbacks": (0.6, 0.5)})

#: teams.md §2.1: the 7-model ensemble (the registry has the DenseNet121/169 members).
ENSEMBLE_MEMBERS = ("DenseNet121_change_avg_v2", "DenseNet121_change_avg_v3", "DenseNet121_change_avg_v5",
                    "DenseNet169_change_avg_v5", "se_resnext50_32x4d_v5", "Xception_osmr_v5",
                    "ibn_densenet121_osmr_v5_2")

NOTES = ("Keras ImageNet DenseNet weights (not torchvision's); BN momentum 0.9 (torch's 0.1, not Keras' 0.99). One optimiser per run: the Adam-amsgrad phases "
         "(epochs 19-23) run as the tail of Team2Schedule on Adamax; use make_amsgrad_optimizer for a faithful "
         "restart. HueSaturationValue is left out of the colour OneOf (RGBY input). Rare-class oversampling is the "
         "recipe's train_sampler (rule v4 by default, the _v5 models'; make_recipe(oversampling='v2'|'v3') for the "
         "other DenseNet121 variants); Kaggle vs external images are told apart by the id (Kaggle UUID vs not, "
         "hpa_zoo.constants.is_kaggle_id). Checkpoint on min validation loss (teams.md §2.5).")


# ---------------------------------------------------------------------------------------------- model
def build_densenet(depth: int = 121, num_classes: int = NUM_CLASSES, input_shape=(512, 512, 4), weights=None,
                   imagenet_weights: str = "imagenet", name: str | None = None) -> keras.Model:
    """Team 2's ``DenseNet{121,169}_change_avg`` (teams.md §2.2) on an RGBY input whose yellow is dropped inside.

    Graph: ``image`` (B, H, W, 4) [0, 255] -> ``rgb`` (`ChannelSelect`, R, G, B) -> ``input_norm`` (ImageNet
    mean/std on /255) -> Keras DenseNet trunk (Keras names ``conv1_conv`` ... ``bn``, ``relu``) -> ``head_gap``
    (GAP, the 1024/1664-d feature) -> ``logits`` Dense(num_classes), float32. No dropout, no extra FC.

    Args:
        depth: 121 or 169.
        num_classes: logits per image.
        input_shape: (H, W, C), C = 4 (RGBY; 3 is accepted and kept as is); H, W >= 32.
        weights: None (random), ``"imagenet"`` (the Keras ImageNet trunk, copied by name through
            `zoo_models.surgery.transplant_weights`; 3-channel stem, no widening; the head stays random), or a
            ``.weights.h5`` of this model.
        imagenet_weights: ``"imagenet"`` (download) or a local ``.weights.h5`` of the 3-channel application.
        name: the Keras model name (the registry builders pass the registry name).

    Returns:
        keras.Model: (B, H, W, C) float32 in [0, 255] -> logits (B, num_classes) float32.
    """
    if depth not in TRUNKS:
        raise ConfigError(f"depth={depth}: Team 2 used DenseNet121 and DenseNet169 (teams.md §2.1); use 121 or 169")
    input_shape = check_input_shape(input_shape, arch=f"DenseNet{depth}", min_side=32, channels=(4, 3))
    if weights not in (None, "imagenet"):
        check_weights_file(weights)
    inputs = keras.Input(shape=input_shape, name="image")
    x = ChannelSelect(RGB_CHANNELS, name="rgb")(inputs) if input_shape[2] == 4 else inputs
    x = input_normalization(IMAGENET_MEAN, IMAGENET_STD)(x)
    trunk = TRUNKS[depth](include_top=False, weights=None, input_tensor=x)
    features = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(trunk.output)
    logits = keras.layers.Dense(num_classes, dtype="float32", name=CLASSIFIER)(features)
    model = keras.Model(inputs, logits, name=name or f"densenet{depth}_team2")
    surgery.set_batchnorm_momentum(model, surgery.TORCH_BN_MOMENTUM)  # PyTorch's running-stat rate, teams.md §6
    if weights == "imagenet":
        src = surgery.imagenet_source(TRUNKS[depth], (input_shape[0] or 224, input_shape[1] or 224),
                                      imagenet_weights=imagenet_weights)
        surgery.transplant_weights(src, model, first_conv=FIRST_CONV, match="name")
    elif weights is not None:
        load_weights_file(model, weights)
    return model


def build_team2_densenet121_rgb_512(num_classes: int = NUM_CLASSES, input_shape=None, weights=None,
                                    **kw) -> keras.Model:
    """``DenseNet121_change_avg`` at 512 (teams.md §2.1-2.2); default input (512, 512, 4). See `build_densenet`."""
    kw.setdefault("name", "team2_densenet121_rgb_512")
    return build_densenet(121, num_classes, input_shape or (IMAGE_SIZE, IMAGE_SIZE, 4), weights, **kw)


def build_team2_densenet169_rgb_512(num_classes: int = NUM_CLASSES, input_shape=None, weights=None,
                                    **kw) -> keras.Model:
    """``DenseNet169_change_avg`` at 512 (teams.md §2.1-2.2); default input (512, 512, 4). See `build_densenet`."""
    kw.setdefault("name", "team2_densenet169_rgb_512")
    return build_densenet(169, num_classes, input_shape or (IMAGE_SIZE, IMAGE_SIZE, 4), weights, **kw)


# ---------------------------------------------------------------------------------------------- loss
def class_weights() -> np.ndarray:
    """teams.md §2.3: ``w_c = (1 - n_c / 30000)^2`` with classes 3, 5, 6, 19, 21, 25 halved. float32 (28,)."""
    from hpa_zoo.nn.losses import team2_class_weights

    return team2_class_weights()


@keras.saving.register_keras_serializable(package="hpa_zoo")
class Team2Loss(keras.losses.Loss):
    """teams.md §2.3 ``BinaryEntropyLoss_weight``: BCE with per-class weights `class_weights`, mean over B·C
    (`hpa_zoo.nn.losses.weighted_bce`). (y_true (B, 28), logits (B, 28)) -> float32 scalar."""

    def __init__(self, name: str = "team2_weighted_bce", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        from hpa_zoo.nn.losses import weighted_bce

        return weighted_bce(y_true, y_pred, class_weights=class_weights())


def make_loss() -> keras.losses.Loss:
    """teams.md §2.3: the class-weighted BCE (`Team2Loss`)."""
    return Team2Loss()


# ---------------------------------------------------------------------------------------------- oversampling
def oversample_copies(ids: Sequence[str], label_sets: Sequence, rule: str = "v3") -> np.ndarray:
    """teams.md §2.4: how many times each image appears in WAIR's training list (0 = dropped by v4).

    Each image's copies come from the FIRST rule (in `OVERSAMPLING_RULES` order) whose class is among its labels
    (an image with classes 27 and 8 gets class 27's 10 copies); images matching no rule appear once. ``"v4"`` is
    ``"v3"`` and also drops external images (non-Kaggle ids, `hpa_zoo.constants.is_kaggle_id`) labelled exactly
    {0}, {25} or {0, 25}.

    Args:
        ids: N image ids (str).
        label_sets: N iterables of class ids (ints), or an (N, C) multi-hot array.
        rule: ``"v2"``, ``"v3"`` or ``"v4"``.

    Returns:
        int64 (N,) copies per image.
    """
    if rule not in OVERSAMPLING_RULES:
        raise ConfigError(f"oversampling rule {rule!r}: use one of {sorted(OVERSAMPLING_RULES)} (teams.md §2.4)")
    if isinstance(label_sets, np.ndarray) and label_sets.ndim == 2:
        label_sets = [np.flatnonzero(row > 0) for row in label_sets]
    if len(label_sets) != len(ids):
        raise ConfigError(f"oversampling: {len(ids)} ids but {len(label_sets)} label rows; give one per image")
    dropped = {frozenset(s) for s in V4_DROPPED_EXTERNAL_LABELS}
    copies = np.ones(len(ids), np.int64)
    for k, (image_id, labels) in enumerate(zip(ids, label_sets)):
        labels = frozenset(int(c) for c in labels)
        if rule == "v4" and labels in dropped and not is_kaggle_id(str(image_id)):
            copies[k] = 0
        else:
            copies[k] = next((n for cls, n in OVERSAMPLING_RULES[rule] if cls in labels), 1)
    return copies


def oversample_ids(df, rule: str = "v3") -> list[str]:
    """teams.md §2.4: the training id list with rare-class images duplicated (WAIR ``dataset.py``), see
    `oversample_copies` for the rules.

    Args:
        df: DataFrame with ``Id`` and either ``labels`` (sequences of class ids, `hpa_zoo.data.labels.read_labels_csv`)
            or ``Target`` (space-separated class ids).
        rule: ``"v2"``, ``"v3"`` or ``"v4"``.

    Returns:
        list of ids (str) in the input order, each repeated its number of copies consecutively
        (`oversampling_sampler` shuffles them for an epoch).
    """
    if rule not in OVERSAMPLING_RULES:
        raise ConfigError(f"oversampling rule {rule!r}: use one of {sorted(OVERSAMPLING_RULES)} (teams.md §2.4)")
    if "Id" not in df.columns or not ({"labels", "Target"} & set(df.columns)):
        raise ConfigError(f"oversample_ids needs columns Id and labels (or Target); got {list(df.columns)}")
    if "labels" in df.columns:
        label_sets = [tuple(int(c) for c in labels) for labels in df["labels"]]
    else:
        label_sets = [tuple(int(c) for c in str(t).split()) for t in df["Target"]]
    ids = [str(i) for i in df["Id"]]
    copies = oversample_copies(ids, label_sets, rule)
    return [image_id for image_id, n in zip(ids, copies) for _ in range(int(n))]


def oversampling_sampler(ids: Sequence[str], labels, *, seed: int, batch_size: int = BATCH_SIZE,
                         rule: str = DEFAULT_OVERSAMPLING) -> list[str]:
    """Team 2's epoch (teams.md §2.4) as a `hpa_zoo.recipe.Recipe.train_sampler`: every training image repeated
    `oversample_copies` times, the whole list shuffled with ``seed`` (WAIR's DataLoader shuffles the duplicated
    list every epoch).

    Args:
        ids: N training ids (str).
        labels: float32 (N, 28) multi-hot labels of ``ids``.
        seed: the epoch's seed (a different permutation per epoch; the same seed gives the same list).
        batch_size: unused (the duplicated list is independent of the batch size); part of the sampler signature.
        rule: ``"v2"``, ``"v3"`` or ``"v4"`` (`OVERSAMPLING_RULES`).

    Returns:
        list[str] of length ``sum(oversample_copies(ids, labels, rule))``, in training order.
    """
    del batch_size
    labels = np.asarray(labels)
    if labels.ndim != 2 or len(labels) != len(ids):
        raise ConfigError(f"oversampling_sampler: labels must be (N, C) multi-hot for the {len(ids)} ids; got "
                          f"shape {labels.shape}")
    copies = oversample_copies(list(ids), labels, rule)
    order = np.random.default_rng(int(seed)).permutation(np.repeat(np.arange(len(ids)), copies))
    return [str(ids[k]) for k in order]


def make_sampler(rule: str = DEFAULT_OVERSAMPLING):
    """The `oversampling_sampler` with ``rule`` fixed: ``(ids, labels, *, seed, batch_size) -> list[str]``, a
    `hpa_zoo.recipe.Recipe.train_sampler`. Raises ConfigError for an unknown rule."""
    if rule not in OVERSAMPLING_RULES:
        raise ConfigError(f"oversampling rule {rule!r}: use one of {sorted(OVERSAMPLING_RULES)} (teams.md §2.4)")
    return functools.partial(oversampling_sampler, rule=rule)


# ---------------------------------------------------------------------------------------------- schedule
@keras.saving.register_keras_serializable(package="hpa_zoo")
class Team2Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """teams.md §2.5 learning rate, per optimiser step, constant within an epoch (WAIR steps it per epoch).

    0-based epoch e (``step // steps_per_epoch``), mapped to the team's 24-epoch clock when ``epochs`` < 24
    (``e_team = floor(e · 24 / epochs)``): e_team < 19 -> ``keras.optimizers.schedules.CosineDecayRestarts``
    (1e-3 -> 1e-5, first period 10 epochs, periods x2: a 10-epoch cosine, then a 20-epoch one cut at epoch 18);
    19 <= e_team < 21 -> 1e-5; e_team >= 21 -> 1e-6 (the Adam-amsgrad phases' rates).

    Args:
        steps_per_epoch: optimiser steps per epoch (>= 1).
        epochs: epochs of this run (>= 1).
    """

    def __init__(self, steps_per_epoch: int, epochs: int = EPOCHS):
        if steps_per_epoch < 1 or epochs < 1:
            raise ConfigError(f"Team2Schedule needs steps_per_epoch >= 1 and epochs >= 1, got {steps_per_epoch}, "
                              f"{epochs}")
        self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)
        self.cosine = keras.optimizers.schedules.CosineDecayRestarts(
            ADAMAX_LR, first_decay_steps=T_MAX, t_mul=T_MULT, m_mul=1.0, alpha=ETA_MIN / ADAMAX_LR)

    def team_epoch(self, step):
        """0-based team epoch (float32 tensor, integer-valued) of optimiser step ``step``."""
        epoch = ops.floor_divide(ops.cast(step, "int64"), self.steps_per_epoch)
        if self.epochs < EPOCHS:
            epoch = ops.floor_divide(epoch * EPOCHS, self.epochs)
        return ops.cast(epoch, "float32")

    def __call__(self, step):
        """step: scalar int tensor -> float32 scalar learning rate."""
        e = self.team_epoch(step)
        lr = ops.cast(self.cosine(e), "float32")
        for first_epoch, value in AMSGRAD_PHASES:
            lr = ops.where(e >= first_epoch, ops.cast(value, "float32"), lr)
        return lr

    def get_config(self):
        return {"steps_per_epoch": self.steps_per_epoch, "epochs": self.epochs}


def make_optimizer(steps_per_epoch: int, epochs: int) -> keras.optimizers.Optimizer:
    """teams.md §2.5: Adamax (no weight decay) with `Team2Schedule` (see the module docstring for the amsgrad tail)."""
    return keras.optimizers.Adamax(learning_rate=Team2Schedule(steps_per_epoch, epochs))


def make_amsgrad_optimizer(learning_rate: float) -> keras.optimizers.Optimizer:
    """teams.md §2.5 epochs 19-23: Adam(amsgrad, weight decay 1e-5) at ``learning_rate`` (1e-5, then 1e-6).

    WAIR creates a new one every epoch (the optimiser state resets); compile a fresh one per epoch to match.
    """
    return keras.optimizers.Adam(learning_rate=learning_rate, amsgrad=True, weight_decay=AMSGRAD_WEIGHT_DECAY)


# ---------------------------------------------------------------------------------------------- data maps
def _colour(image, seed):
    """OneOf[gamma, brightness, contrast] (HSV left out), applied with probability `COLOUR_P`."""
    import tensorflow as tf

    from hpa_zoo.augment import transforms
    from hpa_zoo.augment import autoaugment

    pick_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    ops_ = [functools.partial(transforms.random_gamma, gamma_limit=GAMMA_LIMIT),
            functools.partial(transforms.random_brightness, limit=BRIGHTNESS_LIMIT),
            functools.partial(transforms.random_contrast, limit=CONTRAST_LIMIT)]
    choice = tf.random.stateless_uniform([], pick_seed, 0, len(ops_), dtype=tf.int32)
    one_of = lambda x, s: tf.switch_case(choice, [lambda op=op: op(x, s) for op in ops_])  # noqa: E731
    return autoaugment.apply_with_probability(one_of, COLOUR_P, op_seed)(image)


def _flip(image, seed):
    """albumentations ``Flip`` p .75: one of vertical / horizontal / both (`image_ops.d4_transform` 1, 2, 4)."""
    import tensorflow as tf

    from hpa_zoo.augment import autoaugment
    from hpa_zoo.data import image_ops

    def flip(x, s):
        k = tf.gather([1, 2, 4], tf.random.stateless_uniform([], s, 0, 3, dtype=tf.int32))
        return tf.ensure_shape(image_ops.d4_transform(x, k), x.shape)

    return autoaugment.apply_with_probability(flip, FLIP_P, seed)(image)


def _distort(image, seed):
    """OneOf[GridDistortion(5, .3), ElasticTransform(1, 50, 50)] with probability `DISTORT_P`."""
    import tensorflow as tf

    from hpa_zoo.augment import transforms
    from hpa_zoo.augment import autoaugment

    pick_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    grid = functools.partial(transforms.grid_distortion, num_steps=GRID_STEPS, distort_limit=GRID_LIMIT)
    elastic = functools.partial(transforms.elastic_transform, alpha=ELASTIC_ALPHA, sigma=ELASTIC_SIGMA,
                                alpha_affine=ELASTIC_ALPHA_AFFINE)
    choice = tf.random.stateless_uniform([], pick_seed, 0, 2, dtype=tf.int32)
    one_of = lambda x, s: tf.switch_case(choice, [lambda: grid(x, s), lambda: elastic(x, s)])  # noqa: E731
    return autoaugment.apply_with_probability(one_of, DISTORT_P, op_seed)(image)


def train_map(example: dict, seed, *, input_size: int):
    """teams.md §2.4 training transform on the RGBY image (the model drops yellow): resize to ``input_size``,
    colour OneOf, Flip p .75, ShiftScaleRotate(.2, .2, 180) p 1, Grid/Elastic OneOf p .5.

    Args:
        example: ``{"image": uint8 (H, W, 4), "multi_hot": uint8 (28,), ...}``.
        seed: int (2,) tensor, the stateless per-example seed.

    Returns:
        (image float32 (input_size, input_size, 4) in [0, 255], multi_hot float32 (28,)).
    """
    import tensorflow as tf

    from hpa_zoo.augment import transforms
    from hpa_zoo.data import image_ops

    s = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    image = tf.cast(image_ops.resize(example["image"], input_size), tf.float32)
    image = _colour(image, s[0])
    image = _flip(image, s[1])
    image = transforms.shift_scale_rotate(image, s[2], shift_limit=SSR_SHIFT, scale_limit=SSR_SCALE,
                                       rotate_limit=SSR_ROTATE)
    image = _distort(image, s[3])
    return image, tf.cast(example["multi_hot"], tf.float32)


def eval_map(example: dict, *, input_size: int):
    """Validation: the whole image resized to ``input_size``. Returns (float32 (s, s, 4), float32 (28,))."""
    import tensorflow as tf

    from hpa_zoo.data import image_ops

    image = image_ops.resize(example["image"], input_size)
    return tf.cast(image, tf.float32), tf.cast(example["multi_hot"], tf.float32)


# ---------------------------------------------------------------------------------------------- recipe
def make_recipe(model_name: str | None = "team2_densenet121_rgb_512", *,
                oversampling: str | None = DEFAULT_OVERSAMPLING, **overrides) -> Recipe:
    """Team 2's recipe (both DenseNets share it); ``overrides`` replace `Recipe` fields.

    Args:
        model_name: a Team 2 registry name (both use the same recipe; the name only labels it).
        oversampling: the rare-class oversampling rule of the epoch list (`oversampling_sampler`): ``"v4"``
            (default, the "_v5" models), ``"v3"``, ``"v2"``, or None (every image once per epoch).
        overrides: any `Recipe` field; ``image_size`` / ``input_size`` also rebuild the data maps (the team trained
            on the whole 512 image, so input_size defaults to image_size).

    Returns:
        `hpa_zoo.recipe.Recipe`.
    """
    image_size = int(overrides.pop("image_size", IMAGE_SIZE))
    input_size = int(overrides.pop("input_size", image_size))
    fields = dict(
        name=(model_name or "team2").replace("_rgb_512", ""),
        image_size=image_size,
        input_size=input_size,
        batch_size=BATCH_SIZE,
        epochs=EPOCHS,
        make_loss=make_loss,
        make_optimizer=make_optimizer,
        train_map=functools.partial(train_map, input_size=input_size),
        eval_map=functools.partial(eval_map, input_size=input_size),
        monitor="val_loss",  # teams.md §2.5: checkpoint = minimum validation loss
        monitor_mode="min",
        tta=TTA,
        thresholds=THRESHOLDS,
        train_sampler=None if oversampling is None else make_sampler(oversampling),
        blend=BlendConfig("mean"),  # teams.md §2.6: the unweighted mean of the members' probabilities
        notes=NOTES,
    )
    fields.update(overrides)
    return Recipe(**fields)


RECIPE = make_recipe()
