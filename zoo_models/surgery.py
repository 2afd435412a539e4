"""The one backbone-surgery utility of hpa-zoo: ImageNet 3-channel weights -> N-channel (RGBY) models, new heads.

Every team starts from an ImageNet backbone (DenseNet121, InceptionV3, ResNet50, Xception, custom ResNets) and
feeds it 4 channels (R, G, B, Y). ``keras.applications`` refuses ``weights="imagenet"`` with a channel count other
than 3 (ecosystem.md §2.1: ``obtain_input_shape`` raises), so the recipe is always the same:

1. build the 3-channel application with the ImageNet weights (`imagenet_source`);
2. build the N-channel model with ``weights=None`` (same layer names);
3. copy every weight by layer name and widen the stem kernel (`transplant_weights`, `widen_stem_kernel`).

Stem rules (`widen_stem_kernel`), for a stem kernel in Keras' HWIO layout ``(kh, kw, 3, filters)``:

* ``"copy_red"`` (Teams 1 and 3; teams.md §1.2, iafoss kernel): keep the RGB filters and give every extra channel
  a copy of the **red** filter: ``concat([k, k[:, :, 0:1, :]], axis=2)`` for RGBY.
* ``"mean"``: keep the RGB filters, every extra channel gets the mean of the RGB filters.
* ``"zeros"``: keep the RGB filters, extra channels start at zero (the N-channel model then ignores them and
  reproduces the 3-channel model exactly).
* ``"sum"``: only for ``n_in == 1`` (a greyscale stain): the sum of the RGB filters, so a grey image gives the
  same response as the RGB image with that grey value in all three channels (timm's ``adapt_input_conv``).
* ``"select"``: the general rule; new input channel ``i`` gets source filter ``source[i]``. ``copy_red`` is
  ``select`` with ``source=(0, 1, 2, 0)``; a green-only model is ``n_in=1, source=(1,)``. Any ``n_in >= 1``.

Model code is Keras layers only; the weight arithmetic here is NumPy on host copies of the variables.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from hpa_zoo.errors import ConfigError, WeightsError

#: The stem rules `widen_stem_kernel` understands (see the module docstring).
STEM_RULES = ("copy_red", "mean", "zeros", "sum", "select")


def widen_stem_kernel(kernel_hwio, n_in: int, rule: str = "copy_red", *,
                      source: Sequence[int] | None = None) -> np.ndarray:
    """Adapt a first-conv kernel trained on 3 input channels to ``n_in`` input channels.

    Args:
        kernel_hwio: array-like (kh, kw, c_src, filters), float; c_src is 3 for ImageNet weights.
        n_in: input channels of the new kernel (4 for RGBY).
        rule: one of `STEM_RULES` (module docstring).
        source: for ``rule="select"``: ``n_in`` indices into the source channels.

    Returns:
        np.ndarray (kh, kw, n_in, filters), the kernel's dtype. The first ``min(c_src, n_in)`` channels are the
        source filters unchanged for every rule but ``"sum"`` and ``"select"``.

    Raises:
        ConfigError: unknown rule, or a rule that cannot produce ``n_in`` channels (message says which to use).
    """
    k = np.asarray(kernel_hwio)
    if k.ndim != 4:
        raise ConfigError(f"widen_stem_kernel expects an HWIO kernel (kh, kw, c_in, filters); got shape {k.shape}")
    c_src = k.shape[2]
    if rule not in STEM_RULES:
        raise ConfigError(f"unknown stem rule {rule!r}; use one of {STEM_RULES}")
    if n_in < 1:
        raise ConfigError(f"n_in must be >= 1, got {n_in}")
    if rule == "select":
        if source is None or len(source) != n_in or not all(0 <= int(s) < c_src for s in source):
            raise ConfigError(f"rule='select' needs source= a sequence of {n_in} channel indices in "
                              f"[0, {c_src}), got {source!r}")
        return np.ascontiguousarray(k[:, :, [int(s) for s in source], :])
    if rule == "sum":
        if n_in != 1:
            raise ConfigError(f"rule='sum' makes a 1-channel (greyscale) stem; got n_in={n_in}. "
                              f"Use 'copy_red', 'mean', 'zeros' or 'select' for {n_in} channels.")
        return k.sum(axis=2, keepdims=True).astype(k.dtype)
    if n_in < c_src:
        raise ConfigError(f"rule={rule!r} keeps all {c_src} source channels, so it cannot make n_in={n_in}; "
                          f"use rule='select' with source=(indices to keep) or rule='sum' for n_in=1")
    n_extra = n_in - c_src
    if rule == "copy_red":  # teams.md §1.2: cat([W_rgb, W_rgb[:, :1]]) -> yellow starts as red
        extra = np.repeat(k[:, :, 0:1, :], n_extra, axis=2)
    elif rule == "mean":
        extra = np.repeat(k.mean(axis=2, keepdims=True), n_extra, axis=2)
    else:  # "zeros"
        extra = np.zeros(k.shape[:2] + (n_extra, k.shape[3]), dtype=k.dtype)
    return np.concatenate([k, extra.astype(k.dtype)], axis=2)


@dataclass(frozen=True)
class TransplantReport:
    """What `transplant_weights` did.

    Attributes:
        copied: destination layers whose weights were copied unchanged (by name).
        widened: the stem layer whose kernel was widened (``first_conv``).
        untouched: destination layers with weights that have no source layer (a new head...), left as initialised.
    """

    copied: tuple[str, ...]
    widened: str
    untouched: tuple[str, ...]


def transplant_weights(src_model, dst_model, *, first_conv: str, rule: str = "copy_red",
                       source: Sequence[int] | None = None) -> TransplantReport:
    """Copy every weight of ``src_model`` into the layer of the same name in ``dst_model``, widening the stem.

    Every source layer that holds weights must exist in the destination with the same number of weights and the
    same shapes, except ``first_conv``, whose kernel (HWIO, weight 0) goes through `widen_stem_kernel` (its bias,
    if any, is copied). Destination layers absent from the source (a new head, ``extra_pool``...) are left as
    initialised and listed in the report. Nothing is copied unless everything matches (checked first).

    Args:
        src_model: keras.Model with the pretrained weights (e.g. 3-channel DenseNet121, ImageNet).
        dst_model: keras.Model built with the same layer names and ``weights=None`` (e.g. 4-channel input).
        first_conv: name of the stem conv layer (registry ``first_conv``; DenseNet121: ``"conv1_conv"``).
        rule, source: stem rule, see `widen_stem_kernel`.

    Returns:
        `TransplantReport`.

    Raises:
        WeightsError: a source layer is missing in the destination, or any weight shape differs; the message
            names the layer, the weight and both shapes.
    """
    dst_layers = {layer.name: layer for layer in _weighted_layers(dst_model)}
    src_layers = {layer.name: layer for layer in _weighted_layers(src_model)}
    if first_conv not in src_layers or first_conv not in dst_layers:
        where = "source" if first_conv not in src_layers else "destination"
        raise WeightsError(f"first_conv={first_conv!r} is not a layer with weights in the {where} model "
                           f"{(src_model if where == 'source' else dst_model).name!r}; pass the stem conv's name "
                           f"(the registry row's first_conv)")
    plan: list[tuple[object, list[np.ndarray]]] = []
    for name, src in src_layers.items():
        dst = dst_layers.get(name)
        if dst is None:
            raise WeightsError(f"layer {name!r} of {src_model.name!r} has weights but {dst_model.name!r} has no "
                               f"layer of that name; build the destination with the same layer names")
        values = [np.asarray(v) for v in src.get_weights()]
        if name == first_conv:
            n_in = dst.weights[0].shape[2]
            values[0] = widen_stem_kernel(values[0], n_in, rule, source=source)
        targets = dst.weights
        if len(values) != len(targets):
            raise WeightsError(f"layer {name!r}: {len(values)} weights in {src_model.name!r} but {len(targets)} "
                               f"in {dst_model.name!r}")
        for v, t in zip(values, targets):
            if tuple(v.shape) != tuple(t.shape):
                raise WeightsError(f"layer {name!r} weight {t.path!r}: source shape {tuple(v.shape)} != destination "
                                   f"shape {tuple(t.shape)}; the two models are not the same architecture")
        plan.append((dst, values))
    for dst, values in plan:
        dst.set_weights(values)
    copied = tuple(n for n in src_layers if n != first_conv)
    untouched = tuple(n for n in dst_layers if n not in src_layers)
    return TransplantReport(copied=copied, widened=first_conv, untouched=untouched)


def imagenet_source(app_fn: Callable, spatial_shape: Sequence, *, imagenet_weights: str = "imagenet", **app_kwargs):
    """The 3-channel ``keras.applications`` backbone (``include_top=False``) with pretrained weights.

    Args:
        app_fn: e.g. ``keras.applications.DenseNet121``.
        spatial_shape: (H, W) or (H, W, C); only H and W are used (C is forced to 3). Convolutional weights do not
            depend on it, so it may be small.
        imagenet_weights: ``"imagenet"`` (downloaded by Keras into ``~/.keras/models``) or a local ``.weights.h5``
            / ``.h5`` file saved from the same application (works offline).
        app_kwargs: passed on to ``app_fn``.

    Returns:
        keras.Model, input (B, H, W, 3) float32.

    Raises:
        WeightsError: a path that does not exist, or the download/loading failed (message says how to fix it).
    """
    if imagenet_weights != "imagenet" and not os.path.exists(os.fspath(imagenet_weights)):
        raise WeightsError(f"imagenet_weights={imagenet_weights!r} is neither 'imagenet' nor an existing file; "
                           f"pass 'imagenet' (needs internet once) or the path of a .weights.h5/.h5 file saved from "
                           f"{getattr(app_fn, '__name__', app_fn)} with include_top=False")
    shape = (int(spatial_shape[0]), int(spatial_shape[1]), 3)
    try:
        return app_fn(include_top=False, weights=imagenet_weights, input_shape=shape, **app_kwargs)
    except Exception as exc:  # network errors, wrong file: say what to do
        raise WeightsError(f"could not load {imagenet_weights!r} into {getattr(app_fn, '__name__', app_fn)}"
                           f"(include_top=False): {exc}. Offline? Pass imagenet_weights=<local .weights.h5>, "
                           f"or weights=None.") from exc


def imagenet_backbone(app_fn: Callable, input_shape: Sequence, *, n_channels: int | None = None,
                      imagenet_weights: str = "imagenet", first_conv: str, rule: str = "copy_red",
                      source: Sequence[int] | None = None, **app_kwargs):
    """An N-channel ``keras.applications`` backbone initialised from its 3-channel ImageNet weights.

    Args:
        app_fn: e.g. ``keras.applications.DenseNet121`` / ``InceptionV3`` / ``ResNet50`` / ``Xception``.
        input_shape: (H, W) or (H, W, C) of the N-channel model.
        n_channels: input channels; defaults to ``input_shape[2]`` (4 for RGBY).
        imagenet_weights: see `imagenet_source`.
        first_conv: the stem conv name (DenseNet ``"conv1_conv"``, InceptionV3 ``"conv2d"``, ResNet50
            ``"conv1_conv"``, Xception ``"block1_conv1"``).
        rule, source: stem rule, see `widen_stem_kernel`.
        app_kwargs: passed to ``app_fn`` for both builds (e.g. ``pooling``).

    Returns:
        keras.Model, ``include_top=False``, input (B, H, W, n_channels) float32, same layer names as ``app_fn``.
    """
    if n_channels is None:
        if len(input_shape) < 3:
            raise ConfigError("imagenet_backbone: pass n_channels= or a 3-tuple input_shape (H, W, C)")
        n_channels = int(input_shape[2])
    src = imagenet_source(app_fn, input_shape, imagenet_weights=imagenet_weights, **app_kwargs)
    with warnings.catch_warnings():  # "This model usually expects 1 or 3 input channels": intended here
        warnings.simplefilter("ignore", UserWarning)
        dst = app_fn(include_top=False, weights=None,
                     input_shape=(int(input_shape[0]), int(input_shape[1]), n_channels), **app_kwargs)
    transplant_weights(src, dst, first_conv=first_conv, rule=rule, source=source)
    return dst


def replace_head(model, num_classes: int, *, classifier: str = "logits"):
    """A model whose classifier layer is replaced by a fresh ``Dense(num_classes)`` of the same name.

    The new layer is float32 (logits stay float32 under mixed precision) with the old layer's activation and
    bias setting; everything before it is shared with ``model`` (same layers, same weights).

    Args:
        model: functional keras.Model whose ``classifier`` layer is a ``Dense`` (registry row's ``classifier``).
        num_classes: outputs of the new head.
        classifier: name of the classifier layer.

    Returns:
        keras.Model, same inputs, output (B, num_classes) float32.
    """
    import keras

    try:
        old = model.get_layer(classifier)
    except ValueError as exc:
        raise ConfigError(f"model {model.name!r} has no layer {classifier!r} to replace; pass the registry "
                          f"row's classifier name") from exc
    if not isinstance(old, keras.layers.Dense):
        raise ConfigError(f"layer {classifier!r} of {model.name!r} is a {type(old).__name__}, not a Dense")
    new = keras.layers.Dense(num_classes, activation=old.activation, use_bias=old.use_bias, dtype="float32",
                             name=classifier)
    return keras.Model(model.inputs, new(old.input), name=model.name)


def _weighted_layers(model):
    """Layers of ``model`` (flattened through nested models) that hold weights."""
    import keras

    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(_weighted_layers(layer))
        elif layer.weights:
            out.append(layer)
    return out
