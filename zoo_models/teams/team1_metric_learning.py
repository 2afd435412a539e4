"""Team 1 — bestfitting's metric-learning model, recast as what the paper found it to be: a same-sample detector.

docs/teams.md §1.7: a ResNet50 trained with ArcFace to tell HPAv18 **antibodies** apart (12,815 classes); its
512-d embeddings matched test images to HPAv18 images of the same sample, and Team 1 replaced a matched test
image's prediction by the match's labels. The paper (Ouyang et al. 2019) found that this gained score through
same-sample leaks (in ``test_private`` 935 images had a same-sample image in HPAv18; the model found 647 of them,
69.2 %, and 261 of the 270 predictions it changed had such a partner), not by learning localisation. hpa-zoo
therefore offers it as a **batch-effect / leak detector** (`hpa_zoo.analysis.leaks`), and the label replacement only as an
explicit, documented exploit (`hpa_zoo.infer.ensemble.metric_learning_replace`, off by default).

The method section, in order: constants, the embedding network, the ArcFace layer and loss, and the matching.
The two head dropouts of the original stay on at inference (``F.dropout`` without ``training=``); the
CellProfiling/densenet port fixed that, and so does this one.
"""
from __future__ import annotations

import math
import warnings

import keras
from keras import ops

from hpa_zoo.errors import ConfigError
from hpa_zoo.recipe import Recipe
# teams.md §1.7: matching by per-set standardised cosine above 0.65; the label replacement keeps five tags
from hpa_zoo.nn.matching import KEEP_CLASSES, MATCH_THRESHOLD, match, standardise  # noqa: F401

# ---------------------------------------------------------------------------------------------- constants
#: teams.md §1.7: 768 px, no crop, the 8 dihedral transforms; input /255 only (no mean/std normalisation).
INPUT_SIZE = 768
#: teams.md §1.7 head: concat(avg, max) 4096 -> BN -> Dropout .25 -> 2048 -> ReLU -> BN -> Dropout .5 -> 512 -> BN.
HIDDEN, EMBEDDING_DIM = 2048, 512
DROPOUT1, DROPOUT2 = 0.25, 0.5
EMBEDDING_LAYER = "embedding"
#: teams.md §1.7: ArcFace s = 30, m = 0.5, easy_margin off; loss = (CE(arc logits) + CE(raw cosines)) / 2.
ARC_S, ARC_M = 30.0, 0.5
#: teams.md §1.7: Adam 1e-4 constant, clip 1, batch 32, 50 epochs.
LEARNING_RATE, CLIPNORM, BATCH, EPOCHS = 1e-4, 1.0, 32, 50
FIRST_CONV = "conv1_conv"


# ---------------------------------------------------------------------------------------------- model
@keras.saving.register_keras_serializable(package="hpa_zoo")
class ArcMarginProduct(keras.layers.Layer):
    """Cosines between the L2-normalised embedding and K L2-normalised class vectors (teams.md §1.7).

    (B, D) float -> (B, K) float32 in [-1, 1]; weights (K, D) initialised U(±1/sqrt(D)).
    """

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)

    def build(self, input_shape) -> None:
        d = int(input_shape[-1])
        bound = 1.0 / math.sqrt(d)
        self.class_vectors = self.add_weight(name="class_vectors", shape=(self.num_classes, d),
                                             initializer=keras.initializers.RandomUniform(-bound, bound))

    def call(self, x):
        x = ops.cast(x, "float32")
        x = x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)
        w = ops.cast(self.class_vectors, "float32")
        w = w / ops.maximum(ops.norm(w, axis=-1, keepdims=True), 1e-12)
        return ops.matmul(x, ops.transpose(w))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes}


def build_team1_arcface_resnet50_768(num_classes: int = 1000, input_shape=None, weights=None, **kw) -> keras.Model:
    """Team 1's ``class_resnet50_dropout`` metric-learning network (teams.md §1.7).

    Graph: image [0, 255] -> ``rescale`` (/255) -> Keras ResNet50 trunk (RGBY stem ``conv1_conv``) -> ``head_gap`` ||
    ``head_gmp`` -> BN -> Dropout .25 -> Dense 2048 -> ReLU -> BN -> Dropout .5 -> Dense 512 -> ``embedding`` (BN)
    -> ``logits`` = `ArcMarginProduct` cosines to ``num_classes`` sample / antibody ids.

    Args:
        num_classes: the identities trained on (samples or antibodies).
        input_shape: (H, W, C); default (768, 768, 4).
        weights: None (random), ``"imagenet"`` (Keras' 3-channel ResNet50, stem widened with the red-copy rule;
            needs the download), or a ``.weights.h5`` of this model.

    Returns:
        keras.Model (B, H, W, C) float32 [0, 255] -> cosines (B, num_classes) float32 (the zoo's "logits"
        slot); the registry's feature layer ``embedding`` is the (B, 512) matching vector.
    """
    from zoo_models.surgery import TORCH_BN_MOMENTUM, imagenet_source, set_batchnorm_momentum, transplant_weights

    shape = tuple(input_shape or (INPUT_SIZE, INPUT_SIZE, 4))
    if len(shape) != 3 or any(s is not None and s < 32 for s in shape[:2]):
        raise ConfigError(f"input_shape {shape}: give (H, W, C) with H, W >= 32")
    if int(num_classes) < 2:
        raise ConfigError(f"num_classes={num_classes}: ArcFace needs at least 2 identities")
    inputs = keras.Input(shape=shape, name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    with warnings.catch_warnings():  # "usually expects 1 or 3 input channels": 4 is intended
        warnings.simplefilter("ignore", UserWarning)
        trunk = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=x)
    fmap = trunk.output  # the trunk's layers (conv1_conv ... conv5_block3_out) are this model's own
    pooled = keras.layers.Concatenate(name="head_concat")([keras.layers.GlobalAveragePooling2D(name="head_gap")(fmap),
                                                           keras.layers.GlobalMaxPooling2D(name="head_gmp")(fmap)])
    h = keras.layers.BatchNormalization(name="head_bn1")(pooled)
    h = keras.layers.Dropout(DROPOUT1, name="head_dropout1")(h)
    h = keras.layers.Dense(HIDDEN, name="head_fc1")(h)
    h = keras.layers.ReLU(name="head_relu")(h)
    h = keras.layers.BatchNormalization(name="head_bn2")(h)
    h = keras.layers.Dropout(DROPOUT2, name="head_dropout2")(h)
    h = keras.layers.Dense(EMBEDDING_DIM, name="head_fc2")(h)
    emb = keras.layers.BatchNormalization(name=EMBEDDING_LAYER)(h)
    cos = ArcMarginProduct(num_classes, name="logits", dtype="float32")(emb)
    model = keras.Model(inputs, cos, name=kw.pop("name", "team1_arcface_resnet50_768"))
    set_batchnorm_momentum(model, TORCH_BN_MOMENTUM)  # PyTorch's running-stat rate, trunk and head (teams.md §6)
    if weights == "imagenet":  # Keras' 3-channel ImageNet ResNet50, stem widened with the red-copy rule
        transplant_weights(imagenet_source(keras.applications.ResNet50, shape), model, first_conv=FIRST_CONV,
                           rule="copy_red")
    elif weights is not None:
        model.load_weights(weights)
    return model


# ---------------------------------------------------------------------------------------------- loss
def arcface_logits(cosine, y_true, *, s: float = ARC_S, m: float = ARC_M):
    """ArcFace logits (teams.md §1.7, easy_margin off): for the true class phi = cos(theta + m) where
    cos > cos(pi - m), else cos - sin(pi - m) * m; others keep cos; all times s.

    Args:
        cosine: (B, K) float cosines; y_true: (B, K) one-hot.
    Returns:
        (B, K) float32.
    """
    cosine = ops.clip(ops.cast(cosine, "float32"), -1.0, 1.0)
    y = ops.cast(y_true, "float32")
    sine = ops.sqrt(ops.maximum(1.0 - cosine * cosine, 0.0))
    phi = cosine * math.cos(m) - sine * math.sin(m)
    phi = ops.where(cosine > math.cos(math.pi - m), phi, cosine - math.sin(math.pi - m) * m)
    return s * (y * phi + (1.0 - y) * cosine)


@keras.saving.register_keras_serializable(package="hpa_zoo")
class ArcFaceLoss(keras.losses.Loss):
    """(CE(ArcFace logits) + CE(raw cosines)) / 2, mean over the batch (teams.md §1.7).

    y_true (B, K) one-hot, y_pred (B, K) cosines -> scalar float32.
    """

    def __init__(self, s: float = ARC_S, m: float = ARC_M, name: str = "arcface", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.s, self.m = float(s), float(m)

    def call(self, y_true, y_pred):
        y = ops.cast(y_true, "float32")
        cos = ops.cast(y_pred, "float32")
        arc = keras.losses.categorical_crossentropy(y, arcface_logits(cos, y, s=self.s, m=self.m), from_logits=True)
        plain = keras.losses.categorical_crossentropy(y, cos, from_logits=True)
        return (arc + plain) / 2.0

    def get_config(self) -> dict:
        return {**super().get_config(), "s": self.s, "m": self.m}


def make_optimizer() -> keras.optimizers.Optimizer:
    """teams.md §1.7: Adam 1e-4 constant, gradient-norm clipping at 1."""
    return make_optimizer_for(LEARNING_RATE)


def make_optimizer_for(learning_rate: float = LEARNING_RATE) -> keras.optimizers.Optimizer:
    """teams.md §1.7: Adam at ``learning_rate`` (Team 1: 1e-4, constant), gradient-norm clipping at 1."""
    return keras.optimizers.Adam(float(learning_rate), clipnorm=CLIPNORM)


def make_recipe(model_name: str = "team1_arcface_resnet50_768", **overrides) -> Recipe:
    """Team 1's metric-learning recipe (teams.md §1.7): 768 px whole images, one random D4 transform, ArcFace on
    sample ids, Adam 1e-4 constant with clip 1, batch 32, 50 epochs. ``targets="sample_id"``: the multi-label
    trainer refuses it; `hpa_zoo.train.metric_learning.train_metric_learning` carries it out.

    Args:
        model_name: ``"team1_arcface_resnet50_768"``.
        overrides: `Recipe` fields; ``image_size`` / ``input_size`` (kept equal: no crop).
    Returns:
        `hpa_zoo.recipe.Recipe`.
    """
    import functools

    from hpa_zoo.data import image_ops

    size = int(overrides.pop("input_size", overrides.pop("image_size", INPUT_SIZE)))
    fields = dict(
        name="team1_arcface", image_size=size, input_size=size, batch_size=BATCH, epochs=EPOCHS,
        make_loss=ArcFaceLoss,
        make_optimizer=lambda steps_per_epoch, epochs: make_optimizer_for(LEARNING_RATE),
        train_map=lambda example, seed: (image_ops.random_d4(image_ops.resize(example["image"], size), seed),
                                         example["multi_hot"]),
        eval_map=functools.partial(image_ops.resized_pair, size=size),
        monitor="loss", targets="sample_id", input_is_resized_image=True,
        notes="ArcFace over sample ids (teams.md §1.7); the identities come from the data, not the 28 classes. "
              "BN momentum 0.9 in trunk and head (torch's 0.1).",
    )
    fields.update(overrides)
    return Recipe(**fields)
