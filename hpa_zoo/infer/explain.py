"""What a zoo model looks at and what it has learned: Grad-CAM maps and feature embeddings (paper Figs. 3 and 4).

* `grad_cam` (Selvaraju et al. 2017): for class k and a convolutional layer with activations A (B, h, w, D),
  weights ``alpha_d = mean_{y,x} d logit_k / d A[y, x, d]``, map ``relu(sum_d alpha_d A[..., d])``, bilinearly
  upsampled to the image size and divided by its maximum (per image), so values lie in [0, 1]. The paper showed
  class activation maps at DenseNet "Block3", Inception "Mixed_7c" and ResNet "Layer3"; each registry row names
  its model's layer (``ModelSpec.cam_layer``), which `default_cam_layer` returns.
* `embed` / `umap_projection` / `plot_embedding`: the registry row's ``feature_layer`` (Team 1: the 1024-d output
  of ``head_dropout2``) for a set of images, its 2-D UMAP projection and a scatter coloured by single-location
  class (multi-location images grey), as the paper's Fig. 4.

Gradients: the model-side code is keras.ops; the gradient itself needs the backend's autodiff. The TensorFlow
path (``tf.GradientTape``) is implemented. On JAX one would use ``jax.grad`` of the class logit w.r.t. the
feature map of a split model (``stateless_call``), on torch ``torch.autograd.grad``; `grad_cam` raises a
`ConfigError` saying so on those backends.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from hpa_zoo.atomic import atomic_path
from hpa_zoo.constants import CLASS_NAMES
from hpa_zoo.errors import ConfigError, DiskWriteError, UnknownModelError
from hpa_zoo.registry import get_spec

log = logging.getLogger(__name__)

#: 28 class colours, chosen greedily for the largest minimum CIEDE2000 distance to each other, to grey and to
#: white (minimum pairwise distance ~17): no two classes share a colour, unlike a 20-colour map.
CLASS_COLOURS: tuple[str, ...] = (
    "#5d00ff", "#b90000", "#00e800", "#007400", "#ffb900", "#ff46ff", "#00e8e8", "#5d4600", "#741746", "#008bff",
    "#007474", "#ff7446", "#ffb9d1", "#e84674", "#004674", "#8b8b00", "#b9b9ff", "#5da274", "#8b74a2", "#b97400",
    "#d1d18b", "#46a2b9", "#b917a2", "#00462e", "#8b5d46", "#462e74", "#ffb98b", "#8b74ff")

#: Colour of multi-location (and unlabelled) points.
MULTI_GREY = "#a0a0a0"

#: Marker shapes that, with `CLASS_COLOURS`, tell the classes apart in print too (class k: ``MARKERS[k % 7]``).
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def class_colour(k: int) -> str:
    """Hex colour of class ``k`` (0-based; beyond 28 the palette repeats)."""
    return CLASS_COLOURS[int(k) % len(CLASS_COLOURS)]


#: Colour of images with more than one location in `plot_embedding`.
MULTI_LABEL_GREY = (0.6, 0.6, 0.6, 0.5)


# ---------------------------------------------------------------------------------------------- rendering
def rgby_to_rgb(image) -> np.ndarray:
    """Render an RGBY field of view as an RGB picture (yellow = red + green, the HPA website convention).

    Args:
        image: (H, W, 4) uint8 or float in [0, 255] (R, G, B, Y); (H, W, 3) is returned as uint8 unchanged.

    Returns:
        (H, W, 3) uint8: ``R' = min(255, R + Y/2)``, ``G' = min(255, G + Y/2)``, ``B' = B``.
    """
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 3 or x.shape[-1] not in (3, 4):
        raise ConfigError(f"expected an (H, W, 4) RGBY or (H, W, 3) RGB image, got shape {x.shape}")
    if x.shape[-1] == 3:
        return np.clip(x, 0, 255).astype(np.uint8)
    r, g, b, y = (x[..., i] for i in range(4))
    rgb = np.stack([r + 0.5 * y, g + 0.5 * y, b], axis=-1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def overlay_cam(image_rgby, cam, *, alpha: float = 0.5) -> np.ndarray:
    """Blend a Grad-CAM map (jet colour map) over the RGB rendering of an image.

    Args:
        image_rgby: (H, W, 4) or (H, W, 3) uint8/float [0, 255].
        cam: (H, W) float in [0, 1] (resized bilinearly if its size differs).
        alpha: weight of the heat map.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    import cv2

    rgb = rgby_to_rgb(image_rgby)
    cam = np.asarray(cam, np.float32)
    if cam.ndim != 2:
        raise ConfigError(f"cam must be (H, W), got shape {cam.shape}")
    if cam.shape != rgb.shape[:2]:
        cam = cv2.resize(cam, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.round(np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def save_cam_png(path, image_rgby, cam, *, alpha: float = 0.5) -> Path:
    """Write `overlay_cam` side by side with the plain rendering as an RGB PNG, atomically.

    Args:
        path: the ``.png`` file.
        image_rgby, cam, alpha: see `overlay_cam`.

    Returns:
        Path of the file: an (H, 2W, 3) uint8 PNG, left the image, right the overlay.

    Raises:
        DiskWriteError: the PNG could not be written (nothing half-written is left at ``path``).
    """
    import cv2

    panel = np.concatenate([rgby_to_rgb(image_rgby), overlay_cam(image_rgby, cam, alpha=alpha)], axis=1)
    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), panel[..., ::-1]):
            raise DiskWriteError(f"cannot write {path}: cv2.imwrite failed; check that its folder is writable and "
                                 f"has free space, or write the panel elsewhere")
    return Path(path)


# ---------------------------------------------------------------------------------------------- Grad-CAM
def default_cam_layer(model) -> str:
    """The Grad-CAM layer of ``model``: its registry row's ``cam_layer`` (`hpa_zoo.registry.ModelSpec`; models from
    `hpa_zoo.load` and presets are named after their row), else ``conv4_block24_concat`` if the model has it (any
    DenseNet121), else ``layer3`` (a zoo ResNet), else the last layer with a 4-D (B, h, w, D) output.

    Raises:
        ConfigError: the row's ``cam_layer`` is not a layer of ``model`` (a registry row out of step with its
            builder), or no layer has a 4-D output.
    """
    names = [layer.name for layer in model.layers]
    try:
        row_layer = get_spec(model.name).cam_layer
    except UnknownModelError:
        row_layer = None
    if row_layer:
        if row_layer not in names:
            raise ConfigError(f"registry row {model.name!r} names cam_layer={row_layer!r}, which the model has not; "
                              f"fix the row in hpa_zoo/registry.py or pass layer_name= (CLI --cam-layer)")
        return row_layer
    for name in ("conv4_block24_concat", "layer3"):  # DenseNet121 "Block3"; ResNet "Layer3"
        if name in names:
            return name
    for layer in reversed(model.layers):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4:
            return layer.name
    raise ConfigError(f"model {model.name!r} has no layer with a (B, h, w, D) output; pass layer_name=")


def grad_cam(model, images, *, class_index: int, layer_name: str | None = None, batch_size: int = 8) -> np.ndarray:
    """Grad-CAM maps of one class for a batch of images (module docstring), upsampled to the image size.

    Args:
        model: keras.Model (B, H, W, C) [0, 255] -> logits (B, K) (a zoo model).
        images: (N, H, W, C) or (H, W, C) uint8/float in [0, 255].
        class_index: the class k in [0, K).
        layer_name: convolutional layer; default `default_cam_layer` (the registry row's ``cam_layer``).
        batch_size: images per forward/backward pass.

    Returns:
        (N, H, W) float32 in [0, 1]; each map is divided by its maximum (an all-zero map stays zero, which
        happens when no location has a positive weighted activation).

    Raises:
        ConfigError: bad class index, unknown layer, a non-4-D layer, or a backend other than TensorFlow.
    """
    import keras
    from keras import ops

    if keras.backend.backend() != "tensorflow":
        raise ConfigError(f"grad_cam uses tf.GradientTape; the {keras.backend.backend()!r} backend needs its own "
                          f"gradient call (jax.grad / torch.autograd.grad of the class logit w.r.t. the layer "
                          f"output). Run with KERAS_BACKEND=tensorflow")
    import tensorflow as tf

    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ConfigError(f"images must be (N, H, W, C) or (H, W, C), got shape {np.shape(images)}")
    n_classes = int(model.output_shape[-1])
    if not 0 <= int(class_index) < n_classes:
        raise ConfigError(f"class_index={class_index} is outside [0, {n_classes}) for {model.name!r}")
    layer_name = layer_name or default_cam_layer(model)
    try:
        feature = model.get_layer(layer_name).output
    except ValueError as exc:
        raise ConfigError(f"model {model.name!r} has no layer {layer_name!r}; see default_cam_layer") from exc
    if len(feature.shape) != 4:
        raise ConfigError(f"layer {layer_name!r} outputs shape {feature.shape}; Grad-CAM needs (B, h, w, D)")
    split = keras.Model(model.inputs, [feature, model.outputs[0]], name=f"{model.name}_gradcam")

    maps = []
    for start in range(0, len(x), batch_size):
        batch = tf.convert_to_tensor(x[start:start + batch_size])
        with tf.GradientTape() as tape:
            acts, logits = split(batch, training=False)
            score = ops.sum(ops.cast(logits[:, int(class_index)], "float32"))
        grads = tape.gradient(score, acts)  # (b, h, w, D)
        acts = ops.cast(acts, "float32")
        alpha = ops.mean(ops.cast(grads, "float32"), axis=(1, 2), keepdims=True)  # (b, 1, 1, D)
        cam = ops.relu(ops.sum(alpha * acts, axis=-1, keepdims=True))  # (b, h, w, 1)
        cam = ops.image.resize(cam, (x.shape[1], x.shape[2]), interpolation="bilinear")[..., 0]
        peak = ops.max(cam, axis=(1, 2), keepdims=True)
        cam = ops.where(peak > 0, cam / ops.maximum(peak, 1e-12), ops.zeros_like(cam))
        maps.append(np.clip(ops.convert_to_numpy(cam), 0.0, 1.0).astype(np.float32))
    return np.concatenate(maps, axis=0)


# ---------------------------------------------------------------------------------------------- embeddings
def _image_batches(data, batch_size: int):
    """Yield (b, H, W, C) float32 arrays from an array, a tf.data.Dataset or any iterable of images / batches
    (see `embed`)."""
    if isinstance(data, np.ndarray) or isinstance(data, (list, tuple)):
        x = np.asarray(data, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise ConfigError(f"images must be (N, H, W, C), got shape {x.shape}")
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size]
        return
    for item in (data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data):
        if isinstance(item, dict):
            item = item["image"]
        elif isinstance(item, tuple):
            item = item[0]
        arr = np.asarray(item, dtype=np.float32)
        yield arr[None] if arr.ndim == 3 else arr


def embed(model, dataset_or_images, *, layer: str | None = None, batch_size: int = 8,
          verbose: bool = False) -> np.ndarray:
    """Feature vectors of images at the registry row's ``feature_layer`` (`hpa_zoo.zoo.models_api.feature_extractor`).

    Args:
        model: a zoo model (its name is its registry name) or any functional model with ``layer`` given.
        dataset_or_images: (N, H, W, C) array in [0, 255], or a tf.data.Dataset (or any iterable) yielding
            images, batches of images, ``(images, labels)`` tuples or example dicts with an ``"image"`` key
            (unbatched or batched).
        layer: layer name; default the registry row's ``feature_layer`` (Team 1: ``head_dropout2``, D = 1024).
        batch_size: images per forward pass for array input.
        verbose: log progress every 10 batches.

    Returns:
        (N, D) float32, in input order (dropout is inactive).
    """
    from hpa_zoo.zoo.models_api import feature_extractor

    return _run_batches(feature_extractor(model, layer=layer), dataset_or_images, batch_size, verbose)[0]


def features_and_probabilities(model, dataset_or_images, *, layer: str | None = None, batch_size: int = 8,
                               activation: str = "sigmoid", verbose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`embed`'s features and the model's class probabilities from **one** forward pass per batch.

    The model is split once into a two-output model (the feature layer and the main logits share every layer),
    so the trunk runs once per batch. The whole image is seen at the input size, without TTA: the probabilities
    equal ``hpa-zoo predict --tta none`` (`hpa_zoo.infer.predict_images.predict_images` with ``tta="none"``).

    Args:
        model: a zoo model (a dict-output model is reduced to its ``"logits"``); dataset_or_images, layer,
            batch_size, verbose: as `embed`.
        activation: ``"sigmoid"`` (multi-label, the zoo's models) or ``"softmax"`` (a single-label preset).

    Returns:
        (features (N, D) float32, probabilities (N, K) float32), in input order.
    """
    import keras

    from hpa_zoo.zoo.models_api import feature_extractor

    if activation not in ("sigmoid", "softmax"):
        raise ConfigError(f"activation={activation!r}: use 'sigmoid' or 'softmax'")
    if isinstance(model.output, dict):
        from zoo_models.common import main_output_model

        model = main_output_model(model)
    features = feature_extractor(model, layer=layer)
    both = keras.Model(features.inputs, [features.output, model.outputs[0]], name=f"{model.name}_features_logits")
    feats, logits = _run_batches(both, dataset_or_images, batch_size, verbose)
    act = keras.ops.sigmoid if activation == "sigmoid" else keras.ops.softmax
    return feats, np.asarray(keras.ops.convert_to_numpy(act(logits.astype(np.float32))), np.float32)


def _run_batches(net, dataset_or_images, batch_size: int, verbose: bool) -> list[np.ndarray]:
    """``net`` (one or more outputs) over the batches of `_image_batches`, each output flattened per image and
    concatenated: a list of (N, ...) float32 arrays, one per output."""
    outs: list[list[np.ndarray]] = []
    n = 0
    for i, batch in enumerate(_image_batches(dataset_or_images, batch_size)):
        result = net(batch, training=False)
        result = list(result) if isinstance(result, (list, tuple)) else [result]
        outs = outs or [[] for _ in result]
        for held, r in zip(outs, result):
            held.append(np.asarray(r, dtype=np.float32).reshape(len(batch), -1))
        n += len(batch)
        if verbose and (i + 1) % 10 == 0:
            log.info("embed: %d images", n)
    if not outs:
        raise ConfigError("embed: no images in the input")
    return [np.concatenate(held, axis=0) for held in outs]


def umap_projection(features, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "euclidean",
                    seed: int = 0, *, fallback: str | None = "pca") -> np.ndarray:
    """2-D UMAP projection of feature vectors (umap-learn), as the paper's Fig. 4.

    UMAP needs more points than ``n_neighbors``. With N <= n_neighbors points, ``fallback="pca"`` (default)
    projects on the first two principal components instead and warns (``UserWarning`` naming the fallback);
    ``fallback=None`` raises. With N = 1 the single point is placed at the origin (after the warning).

    Args:
        features: (N, D) float.
        n_neighbors, min_dist, metric: UMAP parameters (umap-learn defaults 15, 0.1, "euclidean").
        seed: ``random_state`` of UMAP (deterministic, single-threaded).
        fallback: ``"pca"`` or None (see above).

    Returns:
        (N, 2) float32.

    Raises:
        ConfigError: not (N, D); too few points with ``fallback=None``; umap-learn missing (says what to install).
    """
    f = np.asarray(features, dtype=np.float32)
    if f.ndim != 2 or len(f) == 0:
        raise ConfigError(f"features must be (N, D) with N >= 1, got shape {f.shape}")
    n = len(f)
    if n <= n_neighbors:
        if fallback != "pca":
            raise ConfigError(f"UMAP with n_neighbors={n_neighbors} needs at least {n_neighbors + 1} points, got {n}; "
                              f"lower n_neighbors or pass fallback='pca'")
        warnings.warn(f"umap_projection: {n} points <= n_neighbors={n_neighbors}; using PCA (first two principal "
                      f"components) instead of UMAP", UserWarning, stacklevel=2)
        centred = f - f.mean(axis=0, keepdims=True)
        if n == 1:
            return np.zeros((1, 2), np.float32)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        xy = u[:, :2] * s[:2]
        return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1]))).astype(np.float32)
    try:
        import umap
    except ImportError as exc:
        raise ConfigError("umap_projection needs umap-learn: pip install umap-learn (or 'hpa-zoo[explain]')") from exc
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, random_state=seed, n_components=2)
    with warnings.catch_warnings():  # "n_jobs overridden to 1 by setting random_state": intended (deterministic)
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(reducer.fit_transform(f), dtype=np.float32)


def plot_embedding(xy, labels: Sequence[Sequence[int]], out_png, *, class_names: Sequence[str] = CLASS_NAMES,
                   title: str | None = None):
    """Scatter plot of a 2-D embedding: single-location images coloured by class, multi-location ones grey.

    Args:
        xy: (N, 2) float coordinates.
        labels: N label lists (class ids); an image with exactly one id is "single-location", an empty list is
            "unlabelled" (grey crosses).
        out_png: the PNG file (written atomically).
        class_names: names for the legend.
        title: plot title.

    Returns:
        matplotlib Figure (already saved; close it with ``matplotlib.pyplot.close(fig)``). Its axes hold one
        ``PathCollection`` per single-location class present (label = class name) and one labelled
        ``"multi-location"`` (colour `MULTI_LABEL_GREY`) when there are such images (``"unlabelled"`` likewise);
        ``fig.hpa_point_count`` is N.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    xy = np.asarray(xy, dtype=np.float32)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ConfigError(f"xy must be (N, 2), got shape {xy.shape}")
    labels = [tuple(int(c) for c in lab) for lab in labels]
    if len(labels) != len(xy):
        raise ConfigError(f"{len(labels)} label lists for {len(xy)} points")
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    for name, mask in (("multi-location", np.array([len(lab) > 1 for lab in labels], dtype=bool)),
                       ("unlabelled", np.array([len(lab) == 0 for lab in labels], dtype=bool))):
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=12, color=MULTI_LABEL_GREY, label=name,
                       marker="o" if name == "multi-location" else "x")
    single = [lab[0] if len(lab) == 1 else -1 for lab in labels]
    for c in sorted({s for s in single if s >= 0}):
        idx = np.array([s == c for s in single])
        name = class_names[c] if c < len(class_names) else str(c)
        ax.scatter(xy[idx, 0], xy[idx, 1], s=14, color=class_colour(c), marker=MARKERS[c % len(MARKERS)], label=name)
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    fig.hpa_point_count = int(len(xy))
    with atomic_path(os.fspath(out_png), suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return fig


# ---------------------------------------------------------------------------------------------- CAM relevance
def score_cams(cams, masks) -> dict:
    """How well class-activation maps point at the class's structure (Fig. 3 of the paper, measured).

    * pointing game: the CAM's maximum lies inside the mask (the first maximum in row-major order);
    * energy: the fraction of the CAM's positive mass inside the mask.

    Args:
        cams: (N, H, W) float maps (e.g. `grad_cam`); masks: (N, H, W) bool, the class's ground-truth pixels
            (images without any mask pixel are left out).

    Returns:
        ``{"n": images scored, "pointing": fraction of hits, "energy": mean energy fraction, "hits": (n,) bool,
        "energies": (n,) float64}``.

    Raises:
        ConfigError: shapes that differ.
    """
    cams = np.asarray(cams, np.float64)
    masks = np.asarray(masks, bool)
    if cams.shape != masks.shape or cams.ndim != 3:
        raise ConfigError(f"score_cams: cams {cams.shape} and masks {masks.shape} must both be (N, H, W)")
    keep = masks.reshape(len(masks), -1).any(1)
    c, m = cams[keep].reshape(int(keep.sum()), -1), masks[keep].reshape(int(keep.sum()), -1)
    hits = m[np.arange(len(c)), c.argmax(1)]
    pos = np.clip(c, 0, None)
    total = pos.sum(1)
    energies = np.where(total > 0, (pos * m).sum(1) / np.where(total > 0, total, 1), 0.0)
    return {"n": int(len(c)), "pointing": float(hits.mean()) if len(c) else None,
            "energy": float(energies.mean()) if len(c) else None, "hits": hits, "energies": energies}


def cam_relevance(model, images, masks, *, class_index: int, layer_name: str | None = None,
                  batch_size: int = 8) -> dict:
    """`score_cams` of a model's Grad-CAM of ``class_index`` against ground-truth masks of that class.

    Args:
        model: a zoo model (B, H, W, C) [0, 255] -> logits; images: (N, H, W, C); masks: (N, H, W) bool.
        class_index, layer_name, batch_size: as `grad_cam`.

    Returns:
        The `score_cams` dict.
    """
    cams = grad_cam(model, images, class_index=class_index, layer_name=layer_name, batch_size=batch_size)
    return score_cams(cams, masks)
