"""Test-time augmentation (TTA) in ``keras.ops``: the 8 dihedral (D4) transforms, random-scale crops, Team 2's random
flip + shift-scale-rotate passes, and the aggregation of the sigmoid probabilities.

* Team 1 (teams.md §1.6): 8 D4 transforms x {whole image resized to the input size, 3 random-scale crops}, combined
  by element-wise MAX of sigmoid probabilities: ``TTAConfig("d4", n_random_crops=3, aggregate="max")``.
* Team 3 (teams.md §3.6): the 8 D4 transforms, mean: ``TTAConfig("d4", aggregate="mean")``.
* Team 2 (teams.md §2.6): 5 random passes of [flip p=.75, shift-scale-rotate(.1, .1, 90 deg)], mean:
  ``TTAConfig("random_flip_ssr", n_random_passes=5, aggregate="mean")``.
* Folds are combined by the arithmetic mean of their TTA probabilities (`fold_average`).

Random choices (crop boxes, flip codes, affine parameters) come from a NumPy generator seeded with ``seed``, so a
prediction is reproducible.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from keras import ops

from hpa_zoo.augment.device import d4_apply  # noqa: F401  (re-exported: the D4 transforms of training and TTA)
from hpa_zoo.constants import D4_ORDER
from hpa_zoo.errors import ConfigError
from hpa_zoo.recipe import TTAConfig
from zoo_models.common import MAIN_OUTPUT, main_output_model

_AGGREGATES = ("max", "mean", "median")
_TRANSFORMS = ("d4", "identity", "random_flip_ssr")

# teams.md §2.6: Team 2's TTA pass = Flip p=.75, then ShiftScaleRotate(shift .1, scale .1, rotate 90) p=1.
SSR_FLIP_PROB = 0.75
SSR_SHIFT_LIMIT = 0.1
SSR_SCALE_LIMIT = 0.1
SSR_ROTATE_LIMIT_DEG = 90.0


def random_crop_boxes(n_images: int, n_crops: int, height: int, width: int, min_side: int, seed: int = 0) -> np.ndarray:
    """Random-scale square crop boxes as in Team 1's training crop (teams.md §1.4).

    Side ``s ~ U{min_side, ..., min(height, width)}``, top-left corner uniform over the positions that keep the box
    inside the image.

    Args:
        n_images, n_crops: how many boxes (one set of ``n_crops`` per image).
        height, width: image size in pixels.
        min_side: smallest side (the network input size).
        seed: NumPy generator seed.

    Returns:
        int64 array (n_images, n_crops, 3) of ``(top, left, side)``.
    """
    max_side = min(height, width)
    if min_side > max_side:
        raise ConfigError(
            f"random crops need input_size <= the image side: input_size={min_side}, image {height}x{width}. "
            "Pass a smaller input_size or a larger image_size."
        )
    rng = np.random.default_rng(seed)
    side = rng.integers(min_side, max_side + 1, size=(n_images, n_crops))
    top = rng.integers(0, height - side + 1)
    left = rng.integers(0, width - side + 1)
    return np.stack([top, left, side], axis=-1).astype(np.int64)


def _resize(images, size: int | None):
    """Bilinear resize (no antialiasing, half-pixel centres) of a (B, H, W, C) float32 batch to (B, size, size, C)."""
    if size is None or (images.shape[1] == size and images.shape[2] == size):
        return images
    return ops.image.resize(images, (size, size), interpolation="bilinear")


def _crop_views(images, boxes: np.ndarray, size: int) -> list:
    """The crops of ``boxes`` (N, K, 3), each resized to ``size``: a list of K float32 (N, size, size, C) batches.

    Crop + bilinear resize is one ``affine_transform`` per view (sampling input ``left + (x + 0.5) * s / size - 0.5``,
    which is exactly what `_resize` with half-pixel centres samples inside the crop), so every call has the same
    shapes: slicing one crop per image (each a different side) made the JAX and TF backends compile a new kernel
    per crop.
    """
    n, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
    if size > height or size > width:
        raise ConfigError(f"TTA crops are resized to {size} px but the image is {height}x{width}; crops need "
                          "input_size <= image side.")
    views = []
    for j in range(boxes.shape[1]):
        top, left, side = (boxes[:, j, i].astype(np.float64) for i in range(3))
        scale = side / size
        zero = np.zeros(n)
        transform = np.stack([scale, zero, left + 0.5 * scale - 0.5, zero, scale, top + 0.5 * scale - 0.5,
                              zero, zero], axis=1).astype(np.float32)
        out = ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="nearest")
        views.append(out[:, :size, :size, :])
    return views


def ssr_matrix(height: int, width: int, *, angle_deg: float = 0.0, scale: float = 1.0, shift=(0.0, 0.0),
               flip_ud: bool = False, flip_lr: bool = False) -> np.ndarray:
    """The `keras.ops.image.affine_transform` 8-vector of a flip + shift-scale-rotate about the image centre.

    Forward map (input pixel -> output pixel, x = column, y = row): ``p_out = c + R(angle) * scale * F (p_in - c)
    + shift``, F the flips; the op wants the inverse (output -> input), which is what is returned.

    Args:
        height, width: image size. angle_deg: rotation in degrees. scale: zoom factor.
        shift: (dx, dy) in pixels. flip_ud, flip_lr: flips applied first.

    Returns:
        float32 (8,) ``[a0, a1, a2, b0, b1, b2, 0, 0]``.
    """
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    angle = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = scale * rotation @ np.diag([-1.0 if flip_lr else 1.0, -1.0 if flip_ud else 1.0])
    inverse = np.linalg.inv(forward)
    offset = centre - inverse @ (centre + np.asarray(shift, dtype=np.float64))
    return np.array([inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1], 0, 0],
                    dtype=np.float32)


def _ssr_matrices(n: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Team 2's random flip + shift-scale-rotate for n images as `ssr_matrix` rows. float32 (n, 8)."""
    rows = []
    for _ in range(n):
        # albumentations Flip: with p=.75 pick one of {vertical, horizontal, both} uniformly.
        flip = int(rng.integers(0, 3)) if rng.random() < SSR_FLIP_PROB else None
        rows.append(ssr_matrix(
            height, width,
            angle_deg=rng.uniform(-SSR_ROTATE_LIMIT_DEG, SSR_ROTATE_LIMIT_DEG),
            scale=1.0 + rng.uniform(-SSR_SCALE_LIMIT, SSR_SCALE_LIMIT),
            shift=tuple(rng.uniform(-SSR_SHIFT_LIMIT, SSR_SHIFT_LIMIT, size=2) * (width, height)),
            flip_ud=flip in (0, 2),
            flip_lr=flip in (1, 2),
        ))
    return np.stack(rows)


def main_output(model: Callable) -> Callable:
    """The model TTA calls: a functional Keras model whose output is a dict is reduced to its ``"logits"`` output
    (`zoo_models.common.main_output_model`, same layers and weights, so the auxiliary heads are not even computed);
    anything else is returned unchanged (a callable returning a dict is handled per batch by `predict_tta`).

    Args:
        model: keras.Model or callable, (B, S, S, C) float32 -> logits (B, K) or ``{"logits": (B, K), ...}``.
    Returns:
        The same kind of object, returning logits (B, K).
    Raises:
        ConfigError: a dict output without ``"logits"``.
    """
    try:
        outputs = model.output
    except (AttributeError, ValueError):  # a plain callable, or a subclassed model that was never called
        return model
    if not isinstance(outputs, dict):
        return model
    return main_output_model(model, MAIN_OUTPUT)


def _logits_of(out, model) -> object:
    """The (B, K) logits in a model's return value: the value itself, the ``"logits"`` entry of a dict, or the only
    element of a one-element list/tuple."""
    if isinstance(out, dict):
        if MAIN_OUTPUT not in out:
            raise ConfigError(f"predict_tta: the model {getattr(model, 'name', model)!r} returned outputs "
                              f"{sorted(out)} but no {MAIN_OUTPUT!r}; return logits (B, K) or a dict with a "
                              f"{MAIN_OUTPUT!r} entry")
        return out[MAIN_OUTPUT]
    if isinstance(out, (list, tuple)):
        if len(out) != 1:
            raise ConfigError(f"predict_tta: the model {getattr(model, 'name', model)!r} returned {len(out)} "
                              f"outputs as a list; TTA needs one logits tensor (B, K): return a dict with a "
                              f"{MAIN_OUTPUT!r} entry or build a single-output model")
        return out[0]
    return out


def _predict_probs(model: Callable, views, batch_size: int, activation: str = "sigmoid") -> np.ndarray:
    """activation(model(views)) in batches (sigmoid, or softmax for single-label models). views (B, S, S, C)
    float32 -> float32 NumPy (B, num_classes)."""
    out = []
    for start in range(0, int(views.shape[0]), batch_size):
        batch = views[start : start + batch_size]
        if hasattr(model, "predict_on_batch"):
            logits = model.predict_on_batch(batch)
        else:
            logits = model(batch)
        logits = ops.cast(ops.convert_to_tensor(_logits_of(logits, model)), "float32")
        if len(logits.shape) != 2:
            raise ConfigError(f"predict_tta: the model {getattr(model, 'name', model)!r} returned shape "
                              f"{tuple(logits.shape)} for a batch of {int(batch.shape[0])}; it must return "
                              "logits (B, K)")
        out.append(ops.convert_to_numpy(ops.softmax(logits, axis=-1) if activation == "softmax"
                                        else ops.sigmoid(logits)))
    return np.concatenate(out, axis=0)


def _aggregate(stack: np.ndarray, how: str) -> np.ndarray:
    """Aggregate (V, N, C) probabilities over the V views with keras.ops -> float32 (N, C)."""
    x = ops.convert_to_tensor(stack)
    reduce = {"max": ops.max, "mean": ops.mean, "median": ops.median}[how]
    return ops.convert_to_numpy(reduce(x, axis=0)).astype(np.float32)


def _validate(config: TTAConfig, images) -> None:
    if config.transforms not in _TRANSFORMS:
        raise ConfigError(f"TTAConfig.transforms={config.transforms!r} is unknown; use one of {_TRANSFORMS}.")
    if config.aggregate not in _AGGREGATES:
        raise ConfigError(f"TTAConfig.aggregate={config.aggregate!r} is unknown; use one of {_AGGREGATES}.")
    if config.n_random_crops < 0 or config.n_random_passes < 0:
        raise ConfigError("TTAConfig.n_random_crops and n_random_passes must be >= 0.")
    if config.transforms == "random_flip_ssr" and config.n_random_passes < 1:
        raise ConfigError('transforms="random_flip_ssr" needs n_random_passes >= 1 (Team 2 used 5).')
    if len(images.shape) != 4:
        raise ConfigError(f"predict_tta expects images (N, H, W, C); got shape {tuple(images.shape)}.")


def predict_tta(
    model: Callable,
    images,
    *,
    config: TTAConfig,
    image_size: int | None = None,
    input_size: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    activation: str = "sigmoid",
) -> np.ndarray:
    """Predict probabilities with test-time augmentation.

    Views: the whole image resized to ``input_size`` plus ``config.n_random_crops`` random-scale square crops
    (`random_crop_boxes`, resized to ``input_size``). Each view goes through the 8 `D4_ORDER` transforms
    (``"d4"``), only the identity (``"identity"``), or ``config.n_random_passes`` random flip + shift-scale-rotate
    passes (``"random_flip_ssr"``, Team 2; border ``"reflect"``, the closest mode TF's affine op offers to
    OpenCV's REFLECT_101). The sigmoid probabilities of all views are combined by ``config.aggregate``.

    Args:
        model: a Keras model (or any callable) mapping (B, S, S, C) float32 images in [0, 255] to logits (B, K),
            or to a dict of outputs of which ``"logits"`` is used (Team 3's ``{"logits", "aux_logits"}``; a
            functional model is first reduced to that output by `main_output`).
        images: (N, H, W, C) uint8 or float images in [0, 255], NumPy or tensor.
        config: `hpa_zoo.recipe.TTAConfig`.
        image_size: if given, images are first resized to (image_size, image_size) (Team 1: 1536), and crops are
            taken from that image.
        input_size: side the model sees (Team 1: 1024); None keeps the whole image as is (then random crops need it).
        batch_size: model batch size.
        seed: seed of the crop boxes and the random passes.
        activation: ``"sigmoid"`` (multi-label, every zoo model) or ``"softmax"`` (a single-label fine-tuned
            preset) turns each view's logits into probabilities.

    Returns:
        float32 NumPy array (N, K) of probabilities.
    """
    if activation not in ("sigmoid", "softmax"):
        raise ConfigError(f"activation={activation!r}: use 'sigmoid' or 'softmax'")
    images = ops.cast(ops.convert_to_tensor(images), "float32")
    _validate(config, images)
    model = main_output(model)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    if config.n_random_crops and input_size is None:
        raise ConfigError("TTAConfig.n_random_crops > 0 needs input_size (the side crops are resized to).")
    if image_size is not None:
        images = _resize(images, image_size)
    n, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])

    views = [_resize(images, input_size)]
    if config.n_random_crops:
        boxes = random_crop_boxes(n, config.n_random_crops, height, width, input_size, seed)
        views += _crop_views(images, boxes, input_size)

    rng = np.random.default_rng([seed, 1])
    probs = []
    for view in views:
        if config.transforms == "d4":
            transformed = [d4_apply(view, k) for k in range(len(D4_ORDER))]
        elif config.transforms == "identity":
            transformed = [view]
        else:
            h, w = int(view.shape[1]), int(view.shape[2])
            transformed = [
                ops.image.affine_transform(view, _ssr_matrices(n, h, w, rng), fill_mode="reflect")
                for _ in range(config.n_random_passes)
            ]
        probs += [_predict_probs(model, t, batch_size, activation) for t in transformed]
    return _aggregate(np.stack(probs, axis=0), config.aggregate)


def fold_average(list_of_probs: Sequence) -> np.ndarray:
    """Arithmetic mean of per-fold probabilities (teams.md §1.6, §2.6).

    Args:
        list_of_probs: F arrays of the same shape (N, K).

    Returns:
        float32 (N, K).
    """
    arrays = [np.asarray(p, dtype=np.float64) for p in list_of_probs]
    if not arrays:
        raise ConfigError("fold_average needs at least one array of probabilities.")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ConfigError(f"fold_average: all folds must have the same shape; got {sorted(shapes)}.")
    return np.mean(np.stack(arrays), axis=0).astype(np.float32)
