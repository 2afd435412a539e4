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

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from hpa_zoo.constants import CHANNELS
from hpa_zoo.errors import ConfigError, WeightsError

logger = logging.getLogger(__name__)

#: The stem rules `widen_stem_kernel` understands (see the module docstring).
STEM_RULES = ("copy_red", "mean", "zeros", "sum", "select")

#: PyTorch's ``BatchNorm{1,2}d(momentum=0.1)`` weights the *new* batch statistic by 0.1; Keras' ``momentum`` weights
#: the *old* running value. The same running-average rate in Keras is therefore 0.9 (docs/teams.md §6).
TORCH_BN_MOMENTUM = 0.9
#: Keras' own default (Keras 2 and 3), and qubvel's ``get_bn_params`` (docs/teams.md §4.2, §6): Christof's Keras-2 GAPNet.
KERAS_BN_MOMENTUM = 0.99


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


def transplant_weights(src_model, dst_model, *, first_conv: str | None, rule: str = "copy_red",
                       source: Sequence[int] | None = None, match: str = "name") -> TransplantReport:
    """Copy every weight of ``src_model`` into the matching layer of ``dst_model``, widening the stem.

    Matching (``match``):

    * ``"name"``: each source layer with weights goes to the destination layer of the same name (DenseNet,
      ResNet50, Xception, hpa-zoo builders: their names are stable). Destination layers absent from the source
      (a new head, ``extra_pool``...) are left as initialised and listed in the report.
    * ``"order"``: the i-th layer with weights of each model, same layer class (for applications whose layer
      names are auto-numbered, e.g. InceptionV3's ``conv2d_94`` in a second build). Both models must have the
      same number of layers with weights.
    * ``"auto"``: ``"name"`` if every source layer name exists in the destination, else ``"order"``.

    The stem (``first_conv``, a destination layer name; None = the first layer with weights) has its kernel
    (weight 0, HWIO) widened by `widen_stem_kernel`; its other weights are copied. Everything is checked before
    anything is written.

    Args:
        src_model: keras.Model with the pretrained weights (e.g. 3-channel DenseNet121, ImageNet).
        dst_model: keras.Model with the same architecture and ``weights=None`` (e.g. 4-channel input).
        first_conv: destination stem conv name (registry ``first_conv``; DenseNet121 ``"conv1_conv"``) or None.
        rule, source: stem rule, see `widen_stem_kernel`.
        match: ``"name"``, ``"order"`` or ``"auto"``.

    Returns:
        `TransplantReport` (destination layer names).

    Raises:
        WeightsError: a source layer without a destination counterpart, a class or weight-shape mismatch (the
            message names the layer, the weight and both shapes), or an unknown ``first_conv``.
    """
    src_layers = _weighted_layers(src_model)
    dst_layers = _weighted_layers(dst_model)
    dst_by_name = {layer.name: layer for layer in dst_layers}
    if first_conv is None:
        first_conv = dst_layers[0].name
    if first_conv not in dst_by_name:
        raise WeightsError(f"first_conv={first_conv!r} is not a layer with weights in {dst_model.name!r}; pass the "
                           f"stem conv's name (the registry row's first_conv) or None for the first layer")
    if match == "auto":
        match = "name" if all(layer.name in dst_by_name for layer in src_layers) else "order"
    if match == "name":
        pairs = []
        for src in src_layers:
            if src.name not in dst_by_name:
                raise WeightsError(f"layer {src.name!r} of {src_model.name!r} has weights but {dst_model.name!r} has "
                                   f"no layer of that name; build the destination with the same layer names or "
                                   f"use match='order'")
            pairs.append((src, dst_by_name[src.name]))
    elif match == "order":
        if len(src_layers) != len(dst_layers):
            raise WeightsError(f"match='order': {src_model.name!r} has {len(src_layers)} layers with weights, "
                               f"{dst_model.name!r} has {len(dst_layers)}; they are not the same architecture")
        pairs = list(zip(src_layers, dst_layers))
    else:
        raise ConfigError(f"match={match!r}: use 'name', 'order' or 'auto'")

    plan: list[tuple[object, list[np.ndarray]]] = []
    for src, dst in pairs:
        if type(src) is not type(dst):
            raise WeightsError(f"layer {dst.name!r}: {type(dst).__name__} in {dst_model.name!r} but source layer "
                               f"{src.name!r} is a {type(src).__name__}")
        values = [np.asarray(v) for v in src.get_weights()]
        if dst.name == first_conv:
            values[0] = widen_stem_kernel(values[0], dst.weights[0].shape[2], rule, source=source)
        targets = dst.weights
        if len(values) != len(targets):
            raise WeightsError(f"layer {dst.name!r}: {len(values)} weights in {src_model.name!r} ({src.name!r}) but "
                               f"{len(targets)} in {dst_model.name!r}")
        for v, t in zip(values, targets):
            if tuple(v.shape) != tuple(t.shape):
                raise WeightsError(f"layer {dst.name!r} weight {t.path!r}: source shape {tuple(v.shape)} != "
                                   f"destination shape {tuple(t.shape)}; the two models are not the same "
                                   f"architecture (or first_conv={first_conv!r} is not the stem)")
        plan.append((dst, values))
    for dst, values in plan:
        dst.set_weights(values)
    done = {dst.name for _, dst in pairs}
    copied = tuple(dst.name for _, dst in pairs if dst.name != first_conv)
    untouched = tuple(layer.name for layer in dst_layers if layer.name not in done)
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
                      imagenet_weights: str = "imagenet", first_conv: str | None = None, rule: str = "copy_red",
                      source: Sequence[int] | None = None, **app_kwargs):
    """An N-channel ``keras.applications`` backbone initialised from its 3-channel ImageNet weights.

    Args:
        app_fn: e.g. ``keras.applications.DenseNet121`` / ``InceptionV3`` / ``ResNet50`` / ``Xception``.
        input_shape: (H, W) or (H, W, C) of the N-channel model.
        n_channels: input channels; defaults to ``input_shape[2]`` (4 for RGBY).
        imagenet_weights: see `imagenet_source`.
        first_conv: the stem conv name in the N-channel model (DenseNet121 / ResNet50 ``"conv1_conv"``, Xception
            ``"block1_conv1"``); None (default) = the first layer with weights, which is the stem for all of these
            and for InceptionV3 (whose layer names are auto-numbered, so layers are matched by order there).
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
    transplant_weights(src, dst, first_conv=first_conv, rule=rule, source=source, match="auto")
    return dst


def replace_head(model, num_classes: int, *, classifier: str | Sequence[str] = "logits"):
    """A model whose classification head is replaced by a fresh one with ``num_classes`` outputs.

    The head of a ``classifier`` layer with K outputs is that layer plus, walking back from it, every layer that
    feeds it a per-class tensor (last axis K) and has ``units`` / ``filters`` = K. So one rule covers:

    * a Dense classifier (Teams 1, 2, 4, ResNet34): the head is the ``Dense`` itself;
    * Team 3's class-wise attention head (`zoo_models.attention.attention_head`): the weightless
      ``ClassAttentionPooling`` named ``classifier`` and the two 1×1 convs that feed it (``*_class_conv``,
      ``*_att_conv``); the optional ``*_pool`` and the trunk are not per-class and stay.

    Each head layer is rebuilt from its config with K replaced by ``num_classes`` (same names, activation, bias,
    initialisers; fresh weights) in float32, so the logits stay float32 under mixed precision. Everything else is
    shared with ``model`` (same layers, same weights), and the output structure is kept (a dict of outputs stays
    a dict; heads not named in ``classifier`` are kept as they are).

    Args:
        model: functional keras.Model.
        num_classes: outputs of the new head.
        classifier: the classifier layer's name (registry row ``classifier``), or several names (e.g.
            ``("logits", "aux_logits")`` for Team 3's training model with its auxiliary head).

    Returns:
        keras.Model, same inputs, the replaced output(s) (B, num_classes) float32.

    Raises:
        ConfigError: no such layer, or a head layer with weights whose class count cannot be changed (neither
            ``units`` nor ``filters``).
    """
    import keras

    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    head: list = []  # producers before consumers
    for name in names:
        try:
            old = model.get_layer(name)
        except ValueError as exc:
            raise ConfigError(f"model {model.name!r} has no layer {name!r} to replace; pass the registry "
                              f"row's classifier name") from exc
        _collect_head(old, int(old.output.shape[-1]), head)
    new_layers = {}
    for layer in head:
        config = layer.get_config()
        for key in ("units", "filters"):
            if key in config:
                config[key] = int(num_classes)
        if layer.weights and not {"units", "filters"} & set(config):
            raise ConfigError(f"layer {layer.name!r} ({type(layer).__name__}) of {model.name!r} has weights but no "
                              f"units/filters: replace_head cannot give it {num_classes} classes")
        config["dtype"] = "float32"
        new_layers[id(layer)] = type(layer).from_config(config)
    built: dict[int, object] = {}

    def rebuilt(tensor):
        producer = tensor._keras_history.operation
        if id(producer) not in new_layers:
            return tensor
        if id(producer) not in built:
            inputs = producer.input
            args = [rebuilt(t) for t in inputs] if isinstance(inputs, (list, tuple)) else rebuilt(inputs)
            built[id(producer)] = new_layers[id(producer)](args)
        return built[id(producer)]

    outputs = model.output
    outputs = ({k: rebuilt(t) for k, t in outputs.items()} if isinstance(outputs, dict)
               else [rebuilt(t) for t in outputs] if isinstance(outputs, (list, tuple)) else rebuilt(outputs))
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # a lone tensor: no structure warning
    return keras.Model(inputs, outputs, name=model.name)


def _collect_head(layer, k: int, head: list) -> None:
    """Append to ``head`` (producers first) ``layer`` and the layers feeding it a last-axis-``k`` tensor that have
    ``units``/``filters`` == k (see `replace_head`)."""
    if any(layer is h for h in head):
        return
    inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
    for tensor in inputs:
        producer = tensor._keras_history.operation
        config = producer.get_config() if hasattr(producer, "get_config") else {}
        if tensor.shape[-1] == k and k in (config.get("units"), config.get("filters")):
            _collect_head(producer, k, head)
    head.append(layer)


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


# ---------------------------------------------------------------------------------------------- channels
def adapt_channels(model, stains: Sequence[str | None], *, source_stains: Sequence[str | None] = CHANNELS,
                   first_conv: str | None, unknown_stats: Sequence[tuple[float, float]] | None = None,
                   norm_stats: Sequence[tuple[float, float]] | None = None):
    """Rebuild ``model`` for new input channels and transplant its weights (`hpa_zoo.train.finetune` step 2).

    Stem init, per new channel: a channel that carries a stain the model knows takes that stain's filter, an
    unknown stain (None) the mean of the model's stem filters. The ``input_norm`` layer keeps the known stains'
    mean/std and takes ``unknown_stats`` for the others, or ``norm_stats`` for every channel when given (a preset
    that recorded its own statistics).

    Args:
        model: functional keras.Model (B, H, W, c_src) [0, 255] -> logits, c_src = len(source_stains).
        stains: per new channel, the HPA stain it carries or None (unknown).
        source_stains: the stain of each of ``model``'s input channels (RGBY for zoo models).
        first_conv: the stem conv's name (registry ``first_conv``).
        unknown_stats: per new channel (mean, std) in [0, 255] units, used in ``input_norm`` for unknown stains
            (default (127.5, 127.5)); ignored for known ones and when the model has no ``input_norm``.
        norm_stats: per new channel (mean, std) in [0, 255] units for every channel of ``input_norm``.

    Returns:
        keras.Model (B, H, W, len(stains)) with the same layer names and name. Stem kernel channel i is the source
        kernel's channel of stain ``stains[i]``, or the mean over the source channels for an unknown stain; every
        other weight is copied unchanged.
    """
    import keras

    stains = list(stains)
    src_index = {s: i for i, s in enumerate(source_stains) if s is not None}
    n_src, n_new = len(source_stains), len(stains)
    h, w = model.input_shape[1:3]
    stats = list(unknown_stats or [(127.5, 127.5)] * n_new)
    norm = _norm_stats(model)

    def clone_layer(layer):
        if layer.name == "input_norm" and norm is not None:
            if norm_stats is not None:
                mean, var = [float(m) for m, _ in norm_stats], [float(s) ** 2 for _, s in norm_stats]
            else:
                mean = [norm[0][src_index[s]] if s in src_index else stats[i][0] for i, s in enumerate(stains)]
                var = [norm[1][src_index[s]] if s in src_index else stats[i][1] ** 2 for i, s in enumerate(stains)]
            return keras.layers.Normalization(axis=-1, mean=mean, variance=var, name="input_norm")
        return layer.__class__.from_config(layer.get_config())

    new_input = keras.Input((h, w, n_new), name=model.inputs[0].name.split(":")[0] or "image")
    new = keras.models.clone_model(model, input_tensors=new_input, clone_function=clone_layer)
    source = [src_index.get(s, 0) for s in stains]
    transplant_weights(model, new, first_conv=first_conv, rule="select", source=source)
    stem = new.get_layer(first_conv) if first_conv else _first_weighted(new)
    src_kernel = np.asarray((model.get_layer(stem.name)).weights[0])
    with_mean = widen_stem_kernel(src_kernel, n_src + 1, "mean")  # channel n_src = mean filter
    kernel = widen_stem_kernel(with_mean, n_new, "select", source=[src_index.get(s, n_src) for s in stains])
    stem.weights[0].assign(kernel)
    return new


def _norm_stats(model):
    """(mean, variance) lists in [0, 255] units of the model's ``input_norm`` layer, or None."""
    try:
        cfg = model.get_layer("input_norm").get_config()
    except ValueError:
        return None
    if cfg.get("mean") is None:
        return None
    return list(np.ravel(cfg["mean"]).astype(float)), list(np.ravel(cfg["variance"]).astype(float))


def _first_weighted(model):
    return next(layer for layer in model.layers if layer.weights)


def insert_after(model, layer_name: str, make_output):
    """A fresh copy of functional ``model`` (new layers from their configs, same names) in which
    ``make_output(t)`` is applied to ``layer_name``'s output before it feeds the rest of the graph (Team 1's large
    DenseNet: an extra 2×2 max-pool after ``pool1``, docs/teams.md §1.1).

    Fresh layers (not shared ones) so that every layer has exactly one call node and ``layer.output`` is the node
    of the returned model (feature extractors rely on it).

    Args:
        model: functional keras.Model.
        layer_name: the layer whose output is transformed.
        make_output: ``(tensor) -> tensor``, building new layers.
    Returns:
        keras.Model with the same inputs and outputs structure.
    """
    import keras

    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        return make_output(out) if layer.name == layer_name else out

    return keras.models.clone_model(model, call_function=call)


def canonical_layer_names(model, auto_name):
    """A fresh copy of ``model`` whose auto-numbered layers (names matching the compiled regex ``auto_name``, group
    1 the base name, e.g. ``conv2d_57``) are renamed by order of appearance (``conv2d``, ``conv2d_1``, ...): the
    names of a first build in a fresh session, whatever the session built before (Team 3's Inception-v3, whose
    registry ``first_conv`` is ``conv2d``).

    Returns:
        keras.Model, same graph and weights values (fresh layers).
    """
    import keras

    counts: dict[str, int] = {}

    def rename(layer):
        config = layer.get_config()
        m = auto_name.fullmatch(layer.name)
        if m:
            k = counts.get(m.group(1), 0)
            counts[m.group(1)] = k + 1
            config["name"] = m.group(1) if k == 0 else f"{m.group(1)}_{k}"
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=rename)


def batchnorm_layers_by_path(model) -> list[tuple[str, object]]:
    """Every ``keras.layers.BatchNormalization`` in ``model``, nested models included, with its path.

    The one walk over a model's BatchNorm layers: `set_batchnorm_momentum` and SWA's running-statistics
    recalibration (``hpa_zoo.train.swa``) both use it. A layer reached twice (shared between nested models) is
    listed once, at its first path.

    Args:
        model: a keras.Model (functional or nested).

    Returns:
        ``[(path, layer), ...]`` in pre-order graph order; ``path`` is the layer's name, prefixed ``outer/`` for
        each nested model it sits in (``"block/bn_inner"``).
    """
    import keras

    found: list[tuple[str, object]] = []
    seen: set[int] = set()

    def visit(layer, prefix: str) -> None:
        for inner in getattr(layer, "layers", ()) or ():
            if id(inner) in seen:
                continue
            seen.add(id(inner))
            if isinstance(inner, keras.layers.BatchNormalization):
                found.append((prefix + inner.name, inner))
            visit(inner, f"{prefix}{inner.name}/")

    visit(model, "")
    return found


def set_batchnorm_momentum(model, momentum: float) -> list[str]:
    """Set the running-statistics momentum of every BatchNormalization layer of ``model``, nested models included.

    ``keras.applications`` trunks (DenseNet, InceptionV3, ResNet50) are built with Keras' 0.99, but the teams that
    trained in PyTorch updated their running statistics at torch's rate (``momentum=0.1`` = Keras 0.9,
    `TORCH_BN_MOMENTUM`). Keras 3 reads ``layer.momentum`` when a training step is traced, and ``get_config``
    saves it, so setting it after the model is built is enough (before ``compile``/``fit``) and survives a
    ``.keras`` save and load. Weights, inference outputs and the trainable flags are unchanged.

    Args:
        model: a keras.Model (functional or nested).
        momentum: float in [0, 1): the weight of the old running value, Keras' convention.

    Returns:
        the names of the BatchNormalization layers set, in graph order (nested ones as ``outer/inner``;
        `batchnorm_layers_by_path`).

    Raises:
        ConfigError: ``momentum`` outside [0, 1) (the message gives both conventions).
    """
    momentum = float(momentum)
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"BatchNorm momentum {momentum}: Keras' momentum weights the old running value and must "
                          f"be in [0, 1); PyTorch's momentum=0.1 is Keras {TORCH_BN_MOMENTUM}")
    names: list[str] = []
    for path, layer in batchnorm_layers_by_path(model):
        layer.momentum = momentum
        names.append(path)
    logger.debug("%s: BatchNorm momentum %.3g on %d layers", getattr(model, "name", model), momentum, len(names))
    return names


def copy_weights_by_name(src_model, dst_model, *, skip: Sequence[str] = ()) -> list[str]:
    """Copy every weighted layer of ``src_model`` into the layer of the same name in ``dst_model`` (same shapes),
    except the names in ``skip`` (e.g. a stem that changes channel count and gets its own rule).

    Returns:
        the names copied.
    Raises:
        WeightsError: a layer missing from ``dst_model`` or with other shapes.
    """
    copied = []
    for layer in src_model.layers:
        if not layer.weights or layer.name in skip:
            continue
        try:
            dst_model.get_layer(layer.name).set_weights(layer.get_weights())
        except ValueError as exc:
            raise WeightsError(f"copy_weights_by_name: layer {layer.name!r} of {src_model.name!r} does not fit "
                               f"{dst_model.name!r}: {exc}") from exc
        copied.append(layer.name)
    return copied
