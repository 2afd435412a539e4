"""Training losses of the HPA teams, written in ``keras.ops`` (TensorFlow, JAX and PyTorch backends).

Every loss takes ``y_true`` multi-hot ``(B, C)`` (any numeric dtype; soft labels allowed unless a docstring says
otherwise) and **logits** ``(B, C)`` (any float dtype), computes in float32 even under mixed precision, and returns a
float32 scalar.

* `focal_loss`: Team 1 (summed over classes) and Team 3 (mean over elements) focal loss, gamma=2, no alpha.
* `lovasz_hinge_per_class`: Berman et al. 2018 Lovasz hinge, one flat binary problem per class over the batch.
* `hard_negative_bce`: Team 1's BCE on all positives + the hardest negatives, per class.
* `BestfittingLoss`: Team 1's ``0.5*focal + 0.5*symmetric Lovasz + 0.5*hard-negative BCE``.
* `weighted_bce` / `team2_class_weights`: Team 2's class-weighted BCE, Team 4's ``pos_weight=10``.
* `soft_f1_loss`: Team 4's ``-log(batch F1)`` term.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from hpa_zoo.constants import KAGGLE_TRAIN_COUNTS
from hpa_zoo.errors import ConfigError

_FOCAL_REDUCTIONS = ("sum_over_classes", "mean")

# teams.md §2.3: Team 2 halves the Kaggle counts of these classes before computing the weights.
TEAM2_HALVED_CLASSES = (3, 5, 6, 19, 21, 25)
# teams.md §2.3: w_c = (1 - n_c / 30000)^2.
TEAM2_WEIGHT_DENOMINATOR = 30000.0
# teams.md §4.2: Russ and Christof use BCEWithLogits(pos_weight=10).
TEAM4_POS_WEIGHT = 10.0


def _as_float32_pair(y_true, logits):
    """Cast ``(y_true, logits)`` to float32 tensors and check they are (B, C) with equal shapes."""
    logits = ops.cast(ops.convert_to_tensor(logits), "float32")
    y_true = ops.cast(ops.convert_to_tensor(y_true), "float32")
    y_shape, z_shape = tuple(y_true.shape), tuple(logits.shape)
    if len(z_shape) != 2 or len(y_shape) != 2:
        raise ConfigError(
            f"losses expect y_true and logits of shape (batch, classes); got y_true {y_shape} and logits "
            f"{z_shape}. Reshape per-image vectors to (1, C)."
        )
    if y_shape != z_shape and None not in y_shape + z_shape:
        raise ConfigError(f"y_true {y_shape} and logits {z_shape} must have the same shape.")
    return y_true, logits


def _bce_with_logits(y_true, logits):
    """Element-wise, numerically stable BCE-with-logits: ``max(z,0) - z*y + log(1 + exp(-|z|))``. float32 (B, C)."""
    return ops.relu(logits) - logits * y_true + ops.softplus(-ops.abs(logits))


def focal_elementwise(y_true, logits, gamma: float = 2.0):
    """Element-wise focal loss ``BCE(z, y) * exp(gamma * logsigmoid(-z * (2y - 1)))`` (= BCE * (1 - p_t)^gamma).

    Args:
        y_true: (B, C) multi-hot labels, any numeric dtype.
        logits: (B, C) logits, any float dtype.
        gamma: focusing parameter (teams.md §1.3, §3.3: 2).

    Returns:
        float32 (B, C) tensor.
    """
    y_true, logits = _as_float32_pair(y_true, logits)
    # teams.md §1.3: the stable form via logsigmoid, no alpha.
    modulator = ops.exp(gamma * ops.log_sigmoid(-logits * (2.0 * y_true - 1.0)))
    return _bce_with_logits(y_true, logits) * modulator


def focal_loss(y_true, logits, gamma: float = 2.0, reduction: str = "sum_over_classes"):
    """Focal loss on logits, gamma=2 and no alpha by default.

    Args:
        y_true: (B, C) multi-hot labels.
        logits: (B, C) logits.
        gamma: focusing parameter.
        reduction: ``"sum_over_classes"`` sums the C classes then averages over the batch (Team 1, teams.md §1.3);
            ``"mean"`` averages all B*C elements (Team 3, teams.md §3.3).

    Returns:
        float32 scalar.
    """
    if reduction not in _FOCAL_REDUCTIONS:
        raise ConfigError(f"focal_loss reduction={reduction!r} is unknown; use one of {_FOCAL_REDUCTIONS}.")
    elements = focal_elementwise(y_true, logits, gamma)
    if reduction == "mean":
        return ops.mean(elements)
    return ops.mean(ops.sum(elements, axis=1))


def _lovasz_hinge_columns(labels, logits):
    """Lovasz hinge of each column of (B, C) as an independent flat binary problem. float32 (C,).

    errors = 1 - z*(2y-1) sorted descending per column; loss_c = dot(relu(errors_sorted), lovasz_grad(gt_sorted)).
    """
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    # Descending order of each column; the permutation carries no gradient (as in Berman's reference).
    perm = ops.argsort(-ops.stop_gradient(errors), axis=0)
    errors_sorted = ops.take_along_axis(errors, perm, axis=0)
    gt_sorted = ops.stop_gradient(ops.take_along_axis(labels, perm, axis=0))
    # Gradient of the Lovasz extension of the Jaccard loss w.r.t. the sorted errors (Berman et al. 2018, Alg. 1).
    gts = ops.sum(gt_sorted, axis=0, keepdims=True)
    intersection = gts - ops.cumsum(gt_sorted, axis=0)
    union = gts + ops.cumsum(1.0 - gt_sorted, axis=0)  # >= 1 everywhere: no division by zero
    jaccard = 1.0 - intersection / union
    grad = ops.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]], axis=0)
    return ops.sum(ops.relu(errors_sorted) * grad, axis=0)


def lovasz_hinge_per_class(y_true, logits, symmetric: bool = True):
    """Lovasz hinge computed per class over the batch dimension, averaged over classes (teams.md §1.3).

    For class c the B logits ``z[:, c]`` and labels ``y[:, c]`` form one flat binary problem (Berman et al. 2018,
    ``lovasz_hinge_flat``). Vectorised over classes (one sort per column, no Python loop).

    Args:
        y_true: (B, C) binary multi-hot labels (0/1).
        logits: (B, C) logits.
        symmetric: if True, ``(lovasz(z, y) + lovasz(-z, 1 - y)) / 2`` (TGS discussion 69053).

    Returns:
        float32 scalar.
    """
    y_true, logits = _as_float32_pair(y_true, logits)
    per_class = _lovasz_hinge_columns(y_true, logits)
    if symmetric:
        per_class = 0.5 * (per_class + _lovasz_hinge_columns(1.0 - y_true, -logits))
    return ops.mean(per_class)


def hard_negative_bce(y_true, logits):
    """Team 1's "HardLog": per class, mean BCE-with-logits on all positives plus the k hardest negatives.

    Per class c over the batch (teams.md §1.3, ``neg_more=2, neg_least_ratio=0.5, neg_max_ratio=0.7``):
    ``k = min(n_neg, n_pos + max(2, int(0.5*n_neg)), int(0.7*n_neg) + 2)``; the hardest negatives are those with the
    largest logits. The per-class means are averaged over classes. ``int(r*n)`` is computed exactly as
    ``floor(r*n)`` with integer arithmetic (the PyTorch original's float64 ``int(0.7*90)`` gives 62, not 63; that
    rounding artefact only matters for classes with >= 90 negatives in one batch).

    Args:
        y_true: (B, C) binary multi-hot labels (a label > 0.5 counts as positive).
        logits: (B, C) logits.

    Returns:
        float32 scalar.
    """
    y_true, logits = _as_float32_pair(y_true, logits)
    positive = y_true > 0.5
    n_pos = ops.sum(ops.cast(positive, "int32"), axis=0)  # (C,)
    n_neg = ops.sum(ops.cast(ops.logical_not(positive), "int32"), axis=0)
    k = ops.minimum(
        n_neg,
        ops.minimum(n_pos + ops.maximum(2, n_neg // 2), (7 * n_neg) // 10 + 2),
    )
    # Rank negatives by logit, hardest (largest) first; positives are pushed behind every negative.
    neg_logits = ops.where(positive, -np.inf, ops.stop_gradient(logits))
    order = ops.argsort(-neg_logits, axis=0)
    rank = ops.argsort(order, axis=0)  # rank[b, c] = position of sample b in class c's order
    keep = ops.logical_or(positive, ops.cast(rank, "int32") < k[None, :])
    keep_f = ops.cast(keep, "float32")
    bce = _bce_with_logits(y_true, logits)
    per_class = ops.sum(bce * keep_f, axis=0) / ops.sum(keep_f, axis=0)  # subset is never empty when B >= 1
    return ops.mean(per_class)


def weighted_bce(y_true, logits, class_weights=None, pos_weight=None):
    """Mean BCE-with-logits with optional per-class weights and positive-term weight.

    element = ``w_c * (pos_weight * y * softplus(-z) + (1 - y) * softplus(z))``, averaged over all B*C elements
    (PyTorch ``binary_cross_entropy(weight=w)`` / ``BCEWithLogitsLoss(pos_weight=...)`` with mean reduction).

    Args:
        y_true: (B, C) multi-hot labels.
        logits: (B, C) logits.
        class_weights: None or (C,) per-class weights (Team 2: `team2_class_weights()`).
        pos_weight: None, a scalar, or (C,) weight of the positive term (Team 4: 10).

    Returns:
        float32 scalar.
    """
    y_true, logits = _as_float32_pair(y_true, logits)
    pos_term = y_true * ops.softplus(-logits)
    if pos_weight is not None:
        pos_term = pos_term * ops.cast(ops.convert_to_tensor(pos_weight), "float32")
    elements = pos_term + (1.0 - y_true) * ops.softplus(logits)
    if class_weights is not None:
        elements = elements * ops.cast(ops.convert_to_tensor(class_weights), "float32")[None, :]
    return ops.mean(elements)


def team2_class_weights() -> np.ndarray:
    """Team 2's per-class BCE weights ``w_c = (1 - n_c / 30000)^2`` (teams.md §2.3).

    ``n_c`` are the Kaggle train counts with classes 3, 5, 6, 19, 21, 25 halved.

    Returns:
        float32 (28,) array.
    """
    counts = KAGGLE_TRAIN_COUNTS.astype(np.float64)
    counts[list(TEAM2_HALVED_CLASSES)] /= 2.0
    return ((1.0 - counts / TEAM2_WEIGHT_DENOMINATOR) ** 2).astype(np.float32)


def soft_f1_loss(y_true, logits, *, straight_through: bool = False, eps: float = 1e-7):
    """``-log(batch F1)``: Team 4's F1 term (teams.md §4.2), macro over classes, computed on the batch.

    With p = sigmoid(z), per class over the batch: ``tp = sum(p*y)``, ``fp = sum(p*(1-y))``, ``fn = sum((1-p)*y)``,
    ``f1_c = 2 tp / (2 tp + fp + fn + eps)``; loss = ``-log(mean_c f1_c + eps)``. With ``straight_through=True``
    the forward pass uses ``round(p)`` (a hard batch F1) and the backward pass the gradient of p, as in Christof's
    GAPNet loss. Team 4 combined it as ``4 * weighted_bce(pos_weight=10) + soft_f1_loss``.

    Args:
        y_true: (B, C) multi-hot labels.
        logits: (B, C) logits.
        straight_through: hard forward, soft backward.
        eps: stabiliser of the ratio and the log.

    Returns:
        float32 scalar.
    """
    y_true, logits = _as_float32_pair(y_true, logits)
    probs = ops.sigmoid(logits)
    if straight_through:
        probs = probs + ops.stop_gradient(ops.round(probs) - probs)
    tp = ops.sum(probs * y_true, axis=0)
    fp = ops.sum(probs * (1.0 - y_true), axis=0)
    fn = ops.sum((1.0 - probs) * y_true, axis=0)
    f1 = 2.0 * tp / (2.0 * tp + fp + fn + eps)
    return -ops.log(ops.mean(f1) + eps)


@keras.saving.register_keras_serializable(package="hpa_zoo")
def focal_per_sample(y_true, logits):
    """Team 1's focal term per sample: gamma=2, summed over classes. float32 (B,).

    Averaging it over a validation set gives Team 1's ``val_focal`` (teams.md §1.3: model selection on focal).
    """
    return ops.sum(focal_elementwise(y_true, logits, 2.0), axis=1)


def make_focal_metric(name: str = "focal") -> keras.metrics.Metric:
    """A Keras metric averaging Team 1's focal term (gamma=2, sum over classes) over all samples seen.

    Compile with ``metrics=[make_focal_metric()]`` and monitor ``"val_focal"``. The model must output logits.

    Returns:
        ``keras.metrics.MeanMetricWrapper`` named ``name`` (float32 result).
    """
    return keras.metrics.MeanMetricWrapper(fn=focal_per_sample, name=name, dtype="float32")


@keras.saving.register_keras_serializable(package="hpa_zoo")
class FocalLoss(keras.losses.Loss):
    """`focal_loss` as a Keras loss on logits; ``call`` returns a float32 scalar.

    Args:
        gamma: focusing parameter (2 for Teams 1 and 3).
        mode: ``"sum_over_classes"`` (Team 1) or ``"mean"`` (Team 3); see `focal_loss`.
        name: loss name.
    """

    def __init__(self, gamma: float = 2.0, mode: str = "sum_over_classes", name: str = "focal_loss", **kwargs):
        if mode not in _FOCAL_REDUCTIONS:
            raise ConfigError(f"FocalLoss mode={mode!r} is unknown; use one of {_FOCAL_REDUCTIONS}.")
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        self.gamma = float(gamma)
        self.mode = mode

    def call(self, y_true, y_pred):
        return focal_loss(y_true, y_pred, gamma=self.gamma, reduction=self.mode)

    def get_config(self):
        config = super().get_config()
        config.update(gamma=self.gamma, mode=self.mode)
        return config


@keras.saving.register_keras_serializable(package="hpa_zoo")
class BestfittingLoss(keras.losses.Loss):
    """Team 1's ``FocalSymmetricLovaszHardLogLoss`` on logits (teams.md §1.3).

    ``L = w_focal * focal(gamma=2, sum over classes) + w_lovasz * symmetric per-class Lovasz
    + w_hard * hard-negative BCE``, weights 0.5 each by default and not normalised. ``call`` returns a float32
    scalar.
    """

    def __init__(
        self,
        focal_weight: float = 0.5,
        lovasz_weight: float = 0.5,
        hard_weight: float = 0.5,
        gamma: float = 2.0,
        name: str = "bestfitting_loss",
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        self.focal_weight = float(focal_weight)
        self.lovasz_weight = float(lovasz_weight)
        self.hard_weight = float(hard_weight)
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        return (
            self.focal_weight * focal_loss(y_true, y_pred, gamma=self.gamma, reduction="sum_over_classes")
            + self.lovasz_weight * lovasz_hinge_per_class(y_true, y_pred, symmetric=True)
            + self.hard_weight * hard_negative_bce(y_true, y_pred)
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            focal_weight=self.focal_weight,
            lovasz_weight=self.lovasz_weight,
            hard_weight=self.hard_weight,
            gamma=self.gamma,
        )
        return config
