"""Team 4 — Wienerschnitzelgemeinschaft, 4th place: a multi-scale ensemble of members' CNNs, hill-climbed and voted.

The method section (teams.md §4), in order: constants; Christof's GAPNet (ResNet18, squeeze-excite + global
pooling at five depths, concat -> BN -> Dropout .5 -> Dense 256 -> BN -> Dropout .5 -> Dense 28) at 512 on whole
images and at 1024 trained on random 512 crops, predicted on 5 fixed crops that a small stacker combines; Dmytro's
GWAP member (ResNet34, RGBY with a fresh stem, `zoo_models.pooling.GlobalWeightedAveragePooling2D` at three
depths -> Dense 256 -> 28); the loss 4·weighted BCE(pos_weight 10) − log(batch F1); Adam 5e-4 with cosine decay;
sampling by each image's rarest label and batches alternating Kaggle / external data; TTA, thresholds, the recipes
for `hpa_zoo.train.trainer`; and `hpa_zoo.infer.ensemble.multiscale_vote` (declared as the recipe's blend: hill climbing with frequency-matched thresholds per
member, then a weighted vote across members, `hpa_zoo.infer.ensemble`).

Deviations (also in the recipes' ``notes``): qubvel's pre-activation ResNet18 taps (``relu0``,
``stage{2,3,4}_unit1_relu1``, ``relu1``) are mapped to the torchvision ResNet18 of `zoo_models.backbones.resnet`
(``relu``, ``layer1``..``layer4``), whose BatchNorm is set to qubvel's momentum 0.99 (teams.md §6) with epsilon 1e-5
(qubvel 2e-5); the SE reduction ratio (16) is not in the facts; IAAAffine's shear is left out
(ShiftScaleRotate with the same translate/rotate/scale); the 8 random-augmentation median TTA is replaced by the
8 dihedral transforms with the median; Dmytro's semi-balanced sampler is not reproduced (its rate depends on the
epoch number, which `hpa_zoo.recipe.Recipe.train_sampler` does not receive). The GAPNet epoch sampler
(`rarest_label_sampler`) tells Kaggle from external images by the id (Kaggle UUID or not) and weights each source
by its own class counts (not stated in the facts).
"""
from __future__ import annotations

import functools
from fractions import Fraction
from typing import Optional, Sequence

import keras
import numpy as np
from keras import ops

from hpa_zoo.constants import NUM_CLASSES, is_kaggle_id
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.recipe import BlendConfig, Recipe, ThresholdConfig, TTAConfig
from zoo_models.pooling import GWAP_BORDER, GlobalWeightedAveragePooling2D
from zoo_models import surgery
from zoo_models.common import (ChannelSelect, check_input_shape, check_weights_file, input_normalization,
                               load_weights_file)

# ---------------------------------------------------------------------------------------------- constants
#: teams.md §4.2 (Christof): GAPNet normalisation = Kaggle RGB mean/std (image / 255).
GAPNET_MEAN = (0.08069, 0.05258, 0.05487)
GAPNET_STD = (0.1300, 0.0879, 0.1386)
#: teams.md §4.2 (Russ): RGBY mean/std, used here for the 4-channel GWAP member (Dmytro's are not in the facts).
RGBY_MEAN = (0.08069, 0.05258, 0.05487, 0.08069)
RGBY_STD = (0.13704, 0.10145, 0.15313, 0.13704)
#: teams.md §4.2: SE + GAP on relu0, stage2_unit1_relu1, stage3_unit1_relu1, stage4_unit1_relu1, relu1 — here the
#: torchvision ResNet18 layers with the same resolution and role.
GAPNET_TAPS = ("relu", "layer1", "layer2", "layer3", "layer4")
SE_RATIO = 16  # not in the facts: the usual squeeze-excite reduction
#: teams.md §4.2: concat -> BN -> Dropout .5 -> Dense 256 relu -> BN -> Dropout .5 -> Dense 28.
HEAD_HIDDEN, HEAD_DROPOUT = 256, 0.5
#: teams.md §4.2 (Dmytro): GWAP at several backbone levels, concatenated -> FC 256 -> 28 (ResNet34 member).
GWAP_TAPS = ("layer2", "layer3", "layer4")
FEATURE_LAYER, CLASSIFIER = "head_fc", "logits"

#: teams.md §4.2: 512 full images (13_ext); 1024 images with RandomCrop 512, 5 fixed crops at test (13_ext_512crop).
FULL_SIZE, CROP_IMAGE_SIZE, CROP_SIZE = 512, 1024, 512
#: teams.md §4.2: batch 30-32, Adam 5e-4 with a 20-epoch cosine schedule.
BATCH_SIZE, EPOCHS, LEARNING_RATE = 32, 20, 5e-4
#: teams.md §4.2: loss = 4 · weighted_BCE(pos_weight=10) − log(batch F1 with straight-through rounding).
BCE_FACTOR, POS_WEIGHT = 4.0, 10.0
#: teams.md §4.2 (Dmytro, resnet34_gwap): focal loss, SGD(momentum .9, wd 1e-5, lr .1),
#: CosineAnnealingLRWithRestarts(T_max 8, T_mult 1.2); 256 epochs; 512 crops.
GWAP_LR, GWAP_MOMENTUM, GWAP_WEIGHT_DECAY, GWAP_T_MAX, GWAP_T_MULT, GWAP_EPOCHS = 0.1, 0.9, 1e-5, 8, 1.2, 256
#: teams.md §4.2: batches alternate 50/50 between Kaggle and external data (60/40 in 13_ext_60_40).
KAGGLE_FRACTION = 0.5
#: teams.md §4.2: training augmentation RandomRotate90, HorizontalFlip, IAAAffine(translate .1, rotate 45, shear 10,
#: scale .9-1.1).
AFFINE_SHIFT, AFFINE_ROTATE, AFFINE_SCALE = 0.1, 45, 0.1

#: teams.md §4.2: stacker input 5×28 -> flatten ‖ mean ‖ std ‖ max -> Dense 256 relu -> Dropout .3 -> Dense 28 sigmoid.
N_CROPS, STACKER_HIDDEN, STACKER_DROPOUT = 5, 256, 0.3
#: Not in the facts: the stacker's optimiser and length.
STACKER_LR, STACKER_EPOCHS, STACKER_BATCH = 1e-3, 60, 64

#: teams.md §4.2: 13_ext predicts with 8 random-augmentation passes and the median (here: the 8 dihedral views).
TTA_FULL = TTAConfig("d4", aggregate="median")
#: The 1024crop512 model's team inference is `predict_five_crops` + the stacker; the recipe's generic TTA (used by
#: `hpa_zoo.infer.predict`) is the whole image resized to the crop size.
TTA_CROP = TTAConfig("identity", aggregate="mean")
#: teams.md §4.1 step 3: frequency-matched thresholds (LB ratios, rare classes 0.004).
THRESHOLDS = ThresholdConfig("freq_match")

NOTES = ("BN momentum: GAPNet 0.99 throughout (Christof: Keras 2, qubvel ResNet18), GWAP 0.9 (Dmytro: torch's "
         "0.1). ResNet18 taps mapped from qubvel's pre-activation names to torchvision's (relu, layer1-4); SE ratio 16 "
         "(not in the facts); IAAAffine without shear; dihedral median TTA instead of 8 random passes. The GAPNet "
         "recipes' train_sampler draws each epoch by rarest-label weight with batches alternating Kaggle / external "
         "images 50/50 (rarest_label_sampler; an id's source = Kaggle UUID or not; each source weighted by its own "
         "class counts, an inference). The GWAP member keeps plain shuffling: Dmytro's semi-balanced sampler "
         "needs the epoch number, which the sampler hook does not receive.")


#: teams.md §4.1: hill-climbing steps of each member's blend.
HILL_CLIMB_STEPS = 30


# ---------------------------------------------------------------------------------------------- models
def _squeeze_excite(x, name: str):
    """Squeeze-excite: GAP -> Dense(C/16) relu -> Dense(C) sigmoid -> channel scale. (B, H, W, C) -> same."""
    c = x.shape[-1]
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = keras.layers.Dense(max(c // SE_RATIO, 1), activation="relu", name=f"{name}_reduce")(s)
    s = keras.layers.Dense(c, activation="sigmoid", name=f"{name}_expand")(s)
    return keras.layers.Multiply(name=f"{name}_scale")([x, s])


def _backbone(arch: str, x, weights, imagenet_weights):
    from zoo_models.backbones import resnet

    fn = {"resnet18": resnet.resnet18, "resnet34": resnet.resnet34}[arch]
    if weights == "imagenet" and imagenet_weights is None:
        raise ConfigError(f"weights='imagenet' for a {arch} member needs imagenet_weights=<path of the torchvision "
                          f"checkpoint> ({resnet.IMAGENET_URLS[arch]}); Keras does not ship {arch}")
    return fn(input_tensor=x, weights="imagenet" if weights == "imagenet" else None,
              imagenet_weights=imagenet_weights)


def build_gapnet(num_classes: int = NUM_CLASSES, input_shape=(512, 512, 4), weights=None, *,
                 imagenet_weights=None, name: str | None = None) -> keras.Model:
    """Christof's GAPNet (teams.md §4.2, ``Christof/models/GAPNet/13_*``): RGB ResNet18 with multi-level pooling.

    Graph: ``image`` (B, H, W, 4) [0, 255] -> ``rgb`` (yellow dropped, `zoo_models.common.ChannelSelect`) ->
    ``input_norm`` (Kaggle RGB mean/std) -> ResNet18 (`zoo_models.backbones.resnet`); at each of `GAPNET_TAPS`
    a squeeze-excite block ``gap_se{k}_*`` and a GAP ``gap{k}`` -> ``head_concat`` (64+64+128+256+512 = 1024) ->
    ``head_bn1`` -> ``head_dropout1`` (.5) -> ``head_fc`` (256, relu) -> ``head_bn2`` -> ``head_dropout2`` (.5)
    -> ``logits`` Dense(num_classes) float32.

    Args:
        num_classes: logits per image.
        input_shape: (H, W, 4) RGBY (or (H, W, 3)), H, W >= 32.
        weights: None, ``"imagenet"`` (with ``imagenet_weights`` = the torchvision resnet18 checkpoint path), or a
            ``.weights.h5`` of this model.
        imagenet_weights: see ``weights``.
        name: Keras model name.

    Returns:
        keras.Model: (B, H, W, C) float32 in [0, 255] -> logits (B, num_classes) float32.
    """
    input_shape = check_input_shape(input_shape, arch="GAPNet", min_side=32, channels=(4, 3))
    if weights not in (None, "imagenet"):
        check_weights_file(weights)
    inputs = keras.Input(shape=input_shape, name="image")
    x = ChannelSelect((0, 1, 2), name="rgb")(inputs) if input_shape[2] == 4 else inputs
    x = input_normalization(GAPNET_MEAN, GAPNET_STD)(x)
    trunk = _backbone("resnet18", x, weights, imagenet_weights)
    pooled = []
    for k, tap in enumerate(GAPNET_TAPS):
        se = _squeeze_excite(trunk.get_layer(tap).output, f"gap_se{k}")
        pooled.append(keras.layers.GlobalAveragePooling2D(name=f"gap{k}")(se))
    x = keras.layers.Concatenate(name="head_concat")(pooled)
    x = keras.layers.BatchNormalization(name="head_bn1")(x)
    x = keras.layers.Dropout(HEAD_DROPOUT, name="head_dropout1")(x)
    x = keras.layers.Dense(HEAD_HIDDEN, activation="relu", name=FEATURE_LAYER)(x)
    x = keras.layers.BatchNormalization(name="head_bn2")(x)
    x = keras.layers.Dropout(HEAD_DROPOUT, name="head_dropout2")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name=CLASSIFIER)(x)
    model = keras.Model(inputs, logits, name=name or "gapnet_resnet18_team4")
    # Christof trained in Keras 2 with qubvel's ResNet18: Keras' 0.99 everywhere, trunk included (teams.md §6)
    surgery.set_batchnorm_momentum(model, surgery.KERAS_BN_MOMENTUM)
    if weights not in (None, "imagenet"):
        load_weights_file(model, weights)
    return model


def build_gwap_net(num_classes: int = NUM_CLASSES, input_shape=(512, 512, 4), weights=None, *,
                   imagenet_weights=None, name: str | None = None) -> keras.Model:
    """Dmytro's ``resnet34_gwap`` (teams.md §4.2): RGBY ResNet34, GWAP at several levels -> FC 256 -> 28.

    Graph: ``image`` (B, H, W, 4) -> ``input_norm`` (RGBY mean/std) -> ResNet34 (stem ``conv1`` freshly
    initialised: Dmytro trains a new 4-channel stem, even with ``weights="imagenet"``, where only the rest of the
    trunk is copied) -> ``gwap{k}`` (`GlobalWeightedAveragePooling2D`) on `GWAP_TAPS` -> ``head_concat`` (128 + 256
    + 512) -> ``head_fc`` (256, relu) -> ``logits``. Maps of 8 px or less (inputs below 256 px) are pooled without
    the 2-px border crop, which would remove most of them.

    Args:
        num_classes, input_shape, weights, imagenet_weights, name: as `build_gapnet` (torchvision resnet34).

    Returns:
        keras.Model: (B, H, W, 4) float32 in [0, 255] -> logits (B, num_classes) float32.
    """
    input_shape = check_input_shape(input_shape, arch="GWAP-ResNet34", min_side=32, channels=(4,))
    if weights not in (None, "imagenet"):
        check_weights_file(weights)
    inputs = keras.Input(shape=input_shape, name="image")
    x = input_normalization(RGBY_MEAN, RGBY_STD)(inputs)
    if weights == "imagenet":  # the trunk from the 3-channel checkpoint, then a fresh stem (Dmytro)
        trunk = _backbone("resnet34", x, None, None)
        donor = _backbone("resnet34", keras.Input((64, 64, 3)), "imagenet", imagenet_weights)
        surgery.copy_weights_by_name(donor, trunk, skip=("conv1",))
    else:
        trunk = _backbone("resnet34", x, None, None)
    pooled = []
    for k, tap in enumerate(GWAP_TAPS):
        fmap = trunk.get_layer(tap).output
        crop = GWAP_BORDER if min(s for s in fmap.shape[1:3] if s is not None) > 4 * GWAP_BORDER else 0
        pooled.append(GlobalWeightedAveragePooling2D(crop=crop, name=f"gwap{k}")(fmap))
    x = keras.layers.Concatenate(name="head_concat")(pooled)
    x = keras.layers.Dense(HEAD_HIDDEN, activation="relu", name=FEATURE_LAYER)(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name=CLASSIFIER)(x)
    model = keras.Model(inputs, logits, name=name or "gwap_resnet34_team4")
    surgery.set_batchnorm_momentum(model, surgery.TORCH_BN_MOMENTUM)  # Dmytro: PyTorch (teams.md §6)
    if weights not in (None, "imagenet"):
        load_weights_file(model, weights)
    return model


def build_team4_gapnet_resnet18_512(num_classes: int = NUM_CLASSES, input_shape=None, weights=None,
                                    **kw) -> keras.Model:
    """GAPNet ``13_ext``: whole 512 images (teams.md §4.2); default input (512, 512, 4). See `build_gapnet`."""
    kw.setdefault("name", "team4_gapnet_resnet18_512")
    return build_gapnet(num_classes, input_shape or (FULL_SIZE, FULL_SIZE, 4), weights, **kw)


def build_team4_gapnet_resnet18_1024crop512(num_classes: int = NUM_CLASSES, input_shape=None, weights=None,
                                            **kw) -> keras.Model:
    """GAPNet ``13_ext_512crop``: 1024 images, the network sees 512 crops (teams.md §4.2); default input
    (512, 512, 4). See `build_gapnet`; predict with `predict_five_crops` and combine with the stacker."""
    kw.setdefault("name", "team4_gapnet_resnet18_1024crop512")
    return build_gapnet(num_classes, input_shape or (CROP_SIZE, CROP_SIZE, 4), weights, **kw)


def build_team4_gwap_resnet34_512(num_classes: int = NUM_CLASSES, input_shape=None, weights=None,
                                  **kw) -> keras.Model:
    """Dmytro's ``resnet34_gwap`` on 512 crops (teams.md §4.2); default input (512, 512, 4). See `build_gwap_net`."""
    kw.setdefault("name", "team4_gwap_resnet34_512")
    return build_gwap_net(num_classes, input_shape or (FULL_SIZE, FULL_SIZE, 4), weights, **kw)


# ---------------------------------------------------------------------------------------------- 5-crop stacker
@keras.saving.register_keras_serializable(package="hpa_zoo")
class CropStatistics(keras.layers.Layer):
    """(B, K, C) crop probabilities -> (B, K·C + 3·C): flatten ‖ mean ‖ std ‖ max over the K crops (teams.md §4.2)."""

    def call(self, x):
        flat = ops.reshape(x, (-1, x.shape[1] * x.shape[2]))
        return ops.concatenate([flat, ops.mean(x, axis=1), ops.std(x, axis=1), ops.max(x, axis=1)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] * input_shape[2] + 3 * input_shape[2])


def build_stacker(n_crops: int = N_CROPS, num_classes: int = NUM_CLASSES) -> keras.Model:
    """Christof's crop stacker (``train_stacker_40.py``, teams.md §4.2).

    Graph: ``crop_probs`` (B, n_crops, C) -> ``crop_stats`` (`CropStatistics`) -> ``stack_fc`` Dense 256 relu ->
    ``stack_dropout`` (.3) -> ``probs`` Dense(C, sigmoid), float32.

    Returns:
        keras.Model: (B, n_crops, C) probabilities -> (B, C) float32 **probabilities** (not logits: it combines
        probabilities, as the team's stacker did).
    """
    inputs = keras.Input((n_crops, num_classes), name="crop_probs")
    x = CropStatistics(name="crop_stats")(inputs)
    x = keras.layers.Dense(STACKER_HIDDEN, activation="relu", name="stack_fc")(x)
    x = keras.layers.Dropout(STACKER_DROPOUT, name="stack_dropout")(x)
    out = keras.layers.Dense(num_classes, activation="sigmoid", dtype="float32", name="probs")(x)
    return keras.Model(inputs, out, name="team4_crop_stacker")


def train_stacker(oof_crop_probs, y_true, *, epochs: int = STACKER_EPOCHS, batch_size: int = STACKER_BATCH,
                  learning_rate: float = STACKER_LR, seed: int = 0, verbose: int = 0) -> keras.Model:
    """Fit `build_stacker` on out-of-fold crop predictions with binary cross-entropy and Adam.

    Args:
        oof_crop_probs: (N, 5, C) float probabilities of the 5 crops (`predict_five_crops` on OOF images).
        y_true: (N, C) multi-hot labels.
        epochs, batch_size, learning_rate: training length / optimiser (not in the facts; defaults 60, 64, 1e-3).
        seed: weight initialisation and shuffling seed.
        verbose: Keras fit verbosity.

    Returns:
        the fitted stacker (B, 5, C) -> (B, C) probabilities.
    """
    x = np.asarray(oof_crop_probs, np.float32)
    y = np.asarray(y_true, np.float32)
    if x.ndim != 3 or y.shape != (x.shape[0], x.shape[2]):
        raise HpaDataError(f"train_stacker: crop probabilities (N, K, C) and labels (N, C) expected; got {x.shape} "
                           f"and {y.shape}")
    keras.utils.set_random_seed(seed)
    model = build_stacker(x.shape[1], x.shape[2])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=verbose)
    return model


def predict_five_crops(model, images, *, crop_size: int = CROP_SIZE, image_size: Optional[int] = None,
                       batch_size: int = 8) -> np.ndarray:
    """Probabilities of the 5 fixed crops ul, ur, centre, bl, br (`hpa_zoo.data.image_ops.five_crop`, teams.md §4.2).

    Args:
        model: (B, crop, crop, C) [0, 255] -> logits (B, K).
        images: (N, H, W, C) uint8 or float [0, 255] images.
        crop_size: crop side (the team: 512 of 1024).
        image_size: resize the images to this side first (None keeps them).
        batch_size: network batch size.

    Returns:
        float32 (N, 5, K) sigmoid probabilities, crops in `five_crop` order.
    """
    import tensorflow as tf

    from hpa_zoo.data import image_ops

    images = tf.convert_to_tensor(images)
    if image_size is not None:
        images = tf.cast(tf.image.resize(tf.cast(images, tf.float32), (image_size, image_size)), tf.float32)
    crops = tf.map_fn(lambda im: tf.cast(image_ops.five_crop(im, crop_size), tf.float32), images,
                      fn_output_signature=tf.TensorSpec((5, crop_size, crop_size, images.shape[-1]), tf.float32))
    flat = tf.reshape(crops, (-1, crop_size, crop_size, images.shape[-1])).numpy()
    logits = np.concatenate([np.asarray(model(flat[i:i + batch_size], training=False), np.float64)
                             for i in range(0, len(flat), batch_size)])
    return (1.0 / (1.0 + np.exp(-logits))).reshape(len(crops), 5, -1).astype(np.float32)


# ---------------------------------------------------------------------------------------------- loss, optimiser
@keras.saving.register_keras_serializable(package="hpa_zoo")
class Team4Loss(keras.losses.Loss):
    """teams.md §4.2 (Christof): ``4 · weighted_bce(pos_weight=10) − log(batch F1)``, the F1 with straight-through
    rounding (`hpa_zoo.nn.losses.weighted_bce`, `hpa_zoo.nn.losses.soft_f1_loss`). (y (B, C), logits (B, C)) -> float32."""

    def __init__(self, bce_factor: float = BCE_FACTOR, pos_weight: float = POS_WEIGHT,
                 name: str = "team4_bce_f1", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        self.bce_factor, self.pos_weight = float(bce_factor), float(pos_weight)

    def call(self, y_true, y_pred):
        from hpa_zoo.nn.losses import soft_f1_loss, weighted_bce

        return (self.bce_factor * weighted_bce(y_true, y_pred, pos_weight=self.pos_weight)
                + soft_f1_loss(y_true, y_pred, straight_through=True))

    def get_config(self):
        return {**super().get_config(), "bce_factor": self.bce_factor, "pos_weight": self.pos_weight}


def make_loss() -> keras.losses.Loss:
    """teams.md §4.2: `Team4Loss` (GAPNet members)."""
    return Team4Loss()


def make_gwap_loss() -> keras.losses.Loss:
    """teams.md §4.2: Dmytro's resnet34_gwap models used focal loss (`hpa_zoo.nn.losses.FocalLoss`, γ 2)."""
    from hpa_zoo.nn.losses import FocalLoss

    return FocalLoss(gamma=2.0)


def make_optimizer(steps_per_epoch: int, epochs: int) -> keras.optimizers.Optimizer:
    """teams.md §4.2: Adam 5e-4, cosine decay to 0 over the run (``epochs · steps_per_epoch`` steps)."""
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, decay_steps=max(1, steps_per_epoch * epochs))
    return keras.optimizers.Adam(learning_rate=schedule)


def make_gwap_optimizer(steps_per_epoch: int, epochs: int) -> keras.optimizers.Optimizer:
    """teams.md §4.2 (Dmytro): SGD(momentum .9, weight decay 1e-5, lr .1), cosine with restarts (T_max 8 epochs,
    T_mult 1.2). Runs shorter than 256 epochs shrink the first period proportionally (at least 1 step)."""
    first = max(1, round(GWAP_T_MAX * steps_per_epoch * min(1.0, epochs / GWAP_EPOCHS)))
    schedule = keras.optimizers.schedules.CosineDecayRestarts(GWAP_LR, first_decay_steps=first, t_mul=GWAP_T_MULT)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=GWAP_MOMENTUM, weight_decay=GWAP_WEIGHT_DECAY)


# ---------------------------------------------------------------------------------------------- sampling
def sampling_weights(labels, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """teams.md §4.2: each image weighted by its rarest label, ``w_i = max_{c in labels_i} 1 / n_c``, with n_c the
    number of images of class c in ``labels`` (Russ' WeightedRandomSampler; Christof's ``sampling_weights``).

    Args:
        labels: (N, C) multi-hot NumPy array, or N sequences of class ids.
        num_classes: C when ``labels`` are id sequences.

    Returns:
        float64 (N,) unnormalised weights; an image without labels gets the most frequent class's weight.
    """
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        arr = labels
    else:
        from hpa_zoo.data.labels import multi_hot_matrix

        arr = multi_hot_matrix([tuple(int(c) for c in row) for row in labels], num_classes=num_classes)
    multi_hot = arr > 0
    counts = multi_hot.sum(axis=0).astype(np.float64)
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    per_image = np.where(multi_hot, inverse[None, :], 0.0).max(axis=1)
    fallback = inverse[counts > 0].min() if (counts > 0).any() else 1.0
    return np.where(multi_hot.any(axis=1), per_image, fallback)


def weighted_sample_ids(ids: Sequence[str], weights, n: int, *, seed: int = 0) -> list[str]:
    """Draw ``n`` ids with replacement, probability proportional to ``weights`` (an epoch's id list for
    `hpa_zoo.data.sources.folder_dataset(ids=...)`). Returns list[str] of length n."""
    w = np.asarray(weights, np.float64)
    if len(w) != len(ids) or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"weighted_sample_ids: {len(ids)} ids need as many non-negative weights (not all 0)")
    picks = np.random.default_rng(seed).choice(len(ids), size=int(n), replace=True, p=w / w.sum())
    return [str(ids[k]) for k in picks]


def alternation_pattern(kaggle_fraction: float = KAGGLE_FRACTION) -> list[int]:
    """The repeating source pattern of `alternate_batches`: 0 = a Kaggle batch, 1 = an external batch.

    The fraction becomes p/q (denominator <= 20) and batch k is Kaggle when ``ceil((k+1)p/q) > ceil(kp/q)``:
    0.5 -> [0, 1]; 0.6 -> [0, 0, 1, 0, 1] (3 Kaggle, 2 external, spread out).
    """
    if not 0.0 < kaggle_fraction <= 1.0:
        raise ConfigError(f"kaggle_fraction={kaggle_fraction}: must be in (0, 1]")
    frac = Fraction(kaggle_fraction).limit_denominator(20)
    p, q = frac.numerator, frac.denominator
    return [0 if -(-(k + 1) * p // q) > -(-k * p // q) else 1 for k in range(q)]


def alternate_batches(kaggle_batches, external_batches, *, kaggle_fraction: float = KAGGLE_FRACTION):
    """teams.md §4.2: batches alternating between Kaggle and external data (50/50; 60/40 in ``13_ext_60_40``).

    ``tf.data.Dataset.choose_from_datasets`` with the repeating `alternation_pattern`: a whole batch comes from one
    source, in a fixed order. Stops when a source runs out (repeat both for training).

    Args:
        kaggle_batches, external_batches: batched tf.data datasets with the same element structure.
        kaggle_fraction: share of Kaggle batches.

    Returns:
        tf.data.Dataset of batches.
    """
    import tensorflow as tf

    choice = tf.data.Dataset.from_tensor_slices(tf.constant(alternation_pattern(kaggle_fraction), tf.int64)).repeat()
    return tf.data.Dataset.choose_from_datasets([kaggle_batches, external_batches], choice,
                                                stop_on_empty_dataset=True)


def is_external_id(image_id: str) -> bool:
    """The source of a training image, read from its id: Kaggle ids are 36-character UUIDs
    (``"00070df0-bbc3-11e8-b2bc-ac1f6b6435d0"``; the synthetic dataset's ids too), anything else is external
    (HPAv18 ``{antibody}_{plate}_{well}_{field}`` such as ``"10580_1610_C1_1"``, Kevin's ``ENSG…_`` form;
    teams.md §0.1, §0.3). `hpa_zoo.constants.is_kaggle_id`, the rule Teams 2 and 3 used."""
    return not is_kaggle_id(str(image_id))


def batch_sources(n: int, batch_size: int, kaggle_fraction: float = KAGGLE_FRACTION) -> np.ndarray:
    """The source of each of ``n`` positions of an epoch list cut into consecutive batches of ``batch_size``:
    batch k comes from ``alternation_pattern(kaggle_fraction)[k % len(pattern)]`` (0 = Kaggle, 1 = external);
    the last batch may be partial. int64 (n,)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: must be >= 1")
    pattern = np.asarray(alternation_pattern(kaggle_fraction), np.int64)
    return pattern[(np.arange(int(n)) // int(batch_size)) % len(pattern)]


def rarest_label_sampler(ids: Sequence[str], labels, *, seed: int, batch_size: int = BATCH_SIZE,
                         kaggle_fraction: float = KAGGLE_FRACTION, n: Optional[int] = None) -> list[str]:
    """Team 4's epoch (teams.md §4.2) as a `hpa_zoo.recipe.Recipe.train_sampler`: ``n`` ids drawn with
    replacement, each with probability proportional to its `sampling_weights` (its rarest label), ordered so that
    consecutive batches of ``batch_size`` alternate between Kaggle and external images in the team's ratio
    (`batch_sources`: 50/50 -> K, E, K, E...; 0.6 -> K, K, E, K, E...).

    The source of an id is `is_external_id` (Kaggle UUID or not). Each source is drawn from its own weighted
    sampler, the weights computed from that source's own class counts (one weighted generator per source, as the
    alternating loaders imply; not stated in the facts). With only one source present (e.g. Kaggle or synthetic
    data alone) it is plain weighted sampling over all ids. `hpa_zoo.train.trainer` keeps this order for a Kaggle-layout
    folder; a TFDS source keeps the draw counts but reshuffles, so there the batches do not alternate.

    Args:
        ids: N training ids (str).
        labels: float32 (N, 28) multi-hot labels of ``ids``.
        seed: the epoch's seed (same seed -> same list).
        batch_size: the training batch size the list will be cut into.
        kaggle_fraction: share of Kaggle batches (teams.md §4.2: 0.5; 0.6 in ``13_ext_60_40``).
        n: epoch length (default N, an epoch as long as the training set).

    Returns:
        list[str] of length ``n`` in training order.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or len(labels) != len(ids):
        raise ConfigError(f"rarest_label_sampler: labels must be (N, C) multi-hot for the {len(ids)} ids; got "
                          f"shape {labels.shape}")
    if len(ids) == 0:
        raise ConfigError("rarest_label_sampler: no training ids")
    n = len(ids) if n is None else int(n)
    rng = np.random.default_rng(int(seed))
    external = np.array([is_external_id(i) for i in ids], bool)
    groups = [np.flatnonzero(~external), np.flatnonzero(external)]
    if not (len(groups[0]) and len(groups[1])):  # one source: plain weighted sampling
        sources = np.zeros(n, np.int64)
        groups = [np.arange(len(ids))]
    else:
        sources = batch_sources(n, batch_size, kaggle_fraction)
    picks = np.empty(n, np.int64)
    for source, members in enumerate(groups):
        slots = np.flatnonzero(sources == source)
        if len(slots):
            w = sampling_weights(labels[members])
            picks[slots] = members[rng.choice(len(members), size=len(slots), replace=True, p=w / w.sum())]
    return [str(ids[k]) for k in picks]


def make_sampler(kaggle_fraction: float = KAGGLE_FRACTION):
    """`rarest_label_sampler` with the team's Kaggle share fixed: a `hpa_zoo.recipe.Recipe.train_sampler`
    ``(ids, labels, *, seed, batch_size) -> list[str]``."""
    alternation_pattern(kaggle_fraction)  # validates the fraction now, not at the first epoch
    return functools.partial(rarest_label_sampler, kaggle_fraction=kaggle_fraction)


# ---------------------------------------------------------------------------------------------- data maps
def _augment(image, seed):
    """teams.md §4.2: RandomRotate90, HorizontalFlip, affine (translate .1, rotate 45, scale .9-1.1; no shear)."""
    import tensorflow as tf

    from hpa_zoo.augment import transforms
    from hpa_zoo.augment import autoaugment

    s = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    image = tf.image.rot90(image, k=tf.random.stateless_uniform([], s[0], 0, 4, dtype=tf.int32))
    image = autoaugment.apply_with_probability(lambda x, _: tf.reverse(x, axis=[1]), 0.5, s[1])(image)
    return transforms.shift_scale_rotate(image, s[2], shift_limit=AFFINE_SHIFT, scale_limit=AFFINE_SCALE,
                                      rotate_limit=AFFINE_ROTATE)


def train_map(example: dict, seed, *, image_size: int, input_size: int):
    """Training path: resize to ``image_size``; a random ``input_size`` crop when smaller (the 1024 model's
    RandomCrop 512); rotate90 / flip / affine. Returns (float32 (input_size, input_size, 4), float32 (28,))."""
    import tensorflow as tf

    from hpa_zoo.data import image_ops

    crop_seed, aug_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.cast(image_ops.resize(example["image"], image_size), tf.float32)
    if input_size < image_size:
        image = tf.image.stateless_random_crop(image, (input_size, input_size, image.shape[-1]), crop_seed)
    image = tf.ensure_shape(_augment(image, aug_seed), (input_size, input_size, image.shape[-1]))
    return image, tf.cast(example["multi_hot"], tf.float32)


def eval_map(example: dict, *, image_size: int, input_size: int):
    """Validation path: resize to ``image_size``; the centre ``input_size`` crop when smaller (the middle of the
    5 crops). Returns (float32 (input_size, input_size, 4), float32 (28,))."""
    import tensorflow as tf

    from hpa_zoo.data import image_ops

    image = image_ops.resize(example["image"], image_size)
    if input_size < image_size:
        image = image_ops.five_crop(image, input_size)[2]
    return tf.cast(image, tf.float32), tf.cast(example["multi_hot"], tf.float32)


# ---------------------------------------------------------------------------------------------- recipes
def make_recipe(model_name: str = "team4_gapnet_resnet18_512", **overrides) -> Recipe:
    """The recipe of a Team 4 registry model; ``overrides`` replace `Recipe` fields.

    ``team4_gapnet_resnet18_512``: 512 whole images, GAPNet loss/optimiser, dihedral median TTA.
    ``team4_gapnet_resnet18_1024crop512``: 1024 images, random 512 crops; ``image_size``/``input_size`` overrides
    keep the 2:1 ratio unless both are given. ``team4_gwap_resnet34_512``: focal loss, SGD cosine restarts.
    All use frequency-matched thresholds (teams.md §4.1). The GAPNet recipes sample each epoch with
    `rarest_label_sampler` (Christof, teams.md §4.2); the GWAP member shuffles plainly (see ``NOTES``).

    Returns:
        `hpa_zoo.recipe.Recipe`.
    """
    crop = model_name.endswith("1024crop512")
    gwap = "gwap" in model_name
    if crop:
        image_size = int(overrides.pop("image_size", CROP_IMAGE_SIZE))
        input_size = int(overrides.pop("input_size", image_size // 2))
    else:
        image_size = int(overrides.pop("image_size", FULL_SIZE))
        input_size = int(overrides.pop("input_size", image_size))
    fields = dict(
        name=model_name,
        image_size=image_size,
        input_size=input_size,
        batch_size=BATCH_SIZE,
        epochs=GWAP_EPOCHS if gwap else EPOCHS,
        make_loss=make_gwap_loss if gwap else make_loss,
        make_optimizer=make_gwap_optimizer if gwap else make_optimizer,
        train_map=functools.partial(train_map, image_size=image_size, input_size=input_size),
        eval_map=functools.partial(eval_map, image_size=image_size, input_size=input_size),
        monitor="val_loss",
        monitor_mode="min",
        tta=TTA_CROP if crop else TTA_FULL,
        thresholds=THRESHOLDS,
        train_sampler=None if gwap else make_sampler(KAGGLE_FRACTION),
        # teams.md §4.1: per member a hill climb on OOF, frequency-matched labels, then a weighted vote
        blend=BlendConfig("hill_climb_vote", {"n_steps": HILL_CLIMB_STEPS}),
        notes=NOTES,
    )
    fields.update(overrides)
    return Recipe(**fields)
