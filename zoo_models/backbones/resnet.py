"""ResNet18/34 (torchvision) and SE-ResNeXt50 32×4d (Cadene ``pretrainedmodels``) in Keras, PyTorch-mappable.

Keras ships neither, and the HPA teams used the PyTorch ImageNet checkpoints (teams.md §3.2: Team 3's resnet34 /
resnet18 and se_resnext50_32x4d; §4.2: Team 4's ResNet18 GAPNet). Every Keras layer with weights is named after
its PyTorch module, ``"."`` -> ``"_"``, so a torch ``state_dict`` maps one to one (`torch_name_map`):

==================================  ========================================  =====================================
block                               Keras layer names                         torch state_dict prefix
==================================  ========================================  =====================================
stem, resnet18/34                   ``conv1``, ``bn1``, ``relu``, ``maxpool``   ``conv1.``, ``bn1.``
stem, se_resnext50_32x4d            ``layer0_conv1``, ``layer0_bn1``, ...       ``layer0.conv1.``, ``layer0.bn1.``
block j of stage i                  ``layer{i}_{j}_conv1`` / ``_bn1`` ...      ``layer{i}.{j}.conv1.`` ...
shortcut                            ``layer{i}_{j}_downsample_0`` / ``_1``    ``layer{i}.{j}.downsample.0/1.``
squeeze-excitation (se_resnext)     ``layer{i}_{j}_se_module_fc1`` / ``fc2``  ``layer{i}.{j}.se_module.fc1/fc2.``
classifier (``include_top``)        ``fc`` (resnet) / ``last_linear``          ``fc.`` / ``last_linear.``
==================================  ========================================  =====================================

Stage outputs are ``Identity`` layers named ``layer1`` ... ``layer4`` (``model.get_layer("layer3").output``, for
multi-level pooling heads). Convolutions use PyTorch's symmetric zero padding (explicit ``ZeroPadding2D`` before a
strided conv), BatchNormalization has torch's eps 1e-5 and momentum 0.1 (Keras 0.9). The stem max-pool is
torchvision's ``MaxPool2d(3, 2, padding=1)`` or Cadene's ``MaxPool2d(3, 2, ceil_mode=True)`` (= one zero row/column
at the bottom/right; zero padding equals PyTorch's -inf padding because the input is post-ReLU, >= 0).
``stem_pool="max2x2"`` is Team 1's ResNet34 variant (MaxPool 2×2 stride 2 after the stem).

ImageNet weights: the user downloads the PyTorch checkpoint (`IMAGENET_URLS`) and passes its path as
``imagenet_weights=``; `load_torch_state_dict` fills a 3-channel model and `zoo_models.surgery` widens the stem
(``copy_red``: yellow starts as a copy of the red filter, teams.md §3.2).
"""
from __future__ import annotations

import os
import re
import warnings

import keras
import numpy as np

from hpa_zoo.errors import ConfigError, WeightsError

# ---------------------------------------------------------------------------------------------- constants
#: torchvision ``resnet18`` / ``resnet34``: BasicBlock, blocks per stage; Cadene ``se_resnext50_32x4d``: (3, 4, 6, 3).
RESNET18_BLOCKS = (2, 2, 2, 2)
RESNET34_BLOCKS = (3, 4, 6, 3)
SE_RESNEXT50_BLOCKS = (3, 4, 6, 3)
#: Stage widths ("planes"); the bottleneck's output is 4× the planes.
PLANES = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4
#: Cadene se_resnext50_32x4d: groups 32, base width 4 -> grouped width floor(planes * 4 / 64) * 32; SE reduction 16.
GROUPS = 32
BASE_WIDTH = 4
SE_REDUCTION = 16
#: PyTorch BatchNorm2d defaults (eps 1e-5, momentum 0.1 = Keras momentum 0.9).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
STEM_POOLS = ("max3x3", "max2x2")

#: Where the PyTorch ImageNet checkpoints come from (download them yourself; pass the file as ``imagenet_weights``).
IMAGENET_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "se_resnext50_32x4d": "http://data.lip6.fr/cadene/pretrainedmodels/se_resnext50_32x4d-a260b3a4.pth",
}
#: The stem conv (registry ``first_conv``) of each family.
FIRST_CONV = {"resnet18": "conv1", "resnet34": "conv1", "se_resnext50_32x4d": "layer0_conv1"}

# Keras variable name -> torch parameter/buffer suffix, per layer class (BN and conv/dense).
_BN_VARS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_DENSE_CONV_VARS = {"kernel": "weight", "bias": "bias"}
_CLASSIFIERS = ("fc", "last_linear")


# ---------------------------------------------------------------------------------------------- layers
def _conv(x, filters, kernel, stride, name, *, padding=None, groups=1, use_bias=False):
    """PyTorch ``Conv2d(kernel, stride, padding, groups, bias)``: explicit symmetric zero padding + 'valid'."""
    pad = (kernel - 1) // 2 if padding is None else padding
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid", groups=groups, use_bias=use_bias,
                               name=name)(x)


def _bn(x, name):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def _shortcut(x, filters, stride, prefix):
    """``downsample`` = Conv1×1(stride) + BN when the shape changes, else the identity."""
    if stride == 1 and x.shape[-1] == filters:
        return x
    s = _conv(x, filters, 1, stride, f"{prefix}_downsample_0")
    return _bn(s, f"{prefix}_downsample_1")


def basic_block(x, planes: int, stride: int, prefix: str):
    """torchvision ``BasicBlock``: conv3×3(stride)-BN-ReLU-conv3×3-BN, + shortcut, ReLU.

    Input (B, H, W, C) Keras tensor -> (B, H/stride, W/stride, planes)."""
    shortcut = _shortcut(x, planes, stride, prefix)
    y = _conv(x, planes, 3, stride, f"{prefix}_conv1")
    y = keras.layers.ReLU(name=f"{prefix}_relu1")(_bn(y, f"{prefix}_bn1"))
    y = _bn(_conv(y, planes, 3, 1, f"{prefix}_conv2"), f"{prefix}_bn2")
    y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_relu2")(y)


def se_resnext_block(x, planes: int, stride: int, prefix: str):
    """Cadene ``SEResNeXtBottleneck``: conv1×1-BN-ReLU, grouped conv3×3(stride, groups 32)-BN-ReLU,
    conv1×1(4·planes)-BN, squeeze-excitation (GAP -> fc1 1×1 -> ReLU -> fc2 1×1 -> sigmoid, channel scale),
    + shortcut, ReLU. Input (B, H, W, C) -> (B, H/stride, W/stride, 4·planes)."""
    width = (planes * BASE_WIDTH // 64) * GROUPS
    out = planes * BOTTLENECK_EXPANSION
    shortcut = _shortcut(x, out, stride, prefix)
    y = _bn(_conv(x, width, 1, 1, f"{prefix}_conv1"), f"{prefix}_bn1")
    y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
    y = _conv(y, width, 3, stride, f"{prefix}_conv2", groups=GROUPS)
    y = keras.layers.ReLU(name=f"{prefix}_relu2")(_bn(y, f"{prefix}_bn2"))
    y = _bn(_conv(y, out, 1, 1, f"{prefix}_conv3"), f"{prefix}_bn3")
    se = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_se_module_avg_pool")(y)
    se = keras.layers.Conv2D(out // SE_REDUCTION, 1, name=f"{prefix}_se_module_fc1")(se)
    se = keras.layers.ReLU(name=f"{prefix}_se_module_relu")(se)
    se = keras.layers.Conv2D(out, 1, activation="sigmoid", name=f"{prefix}_se_module_fc2")(se)
    y = keras.layers.Multiply(name=f"{prefix}_se_module_scale")([y, se])
    y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_relu3")(y)


def _stem(x, prefix: str, stem_pool: str, ceil_mode: bool):
    """7×7/2 conv (64) - BN - ReLU - max-pool (see the module docstring for the three pool variants)."""
    p = f"{prefix}_" if prefix else ""
    x = _conv(x, 64, 7, 2, f"{p}conv1")
    x = keras.layers.ReLU(name=f"{p}relu1" if prefix else "relu")(_bn(x, f"{p}bn1"))
    pool_name = f"{p}pool" if prefix else "maxpool"
    if stem_pool == "max2x2":  # Team 1's ResNet34 variant
        return keras.layers.MaxPooling2D(2, 2, name=pool_name)(x)
    pad = ((0, 1), (0, 1)) if ceil_mode else 1  # post-ReLU: zero padding == torch's -inf padding
    x = keras.layers.ZeroPadding2D(pad, name=f"{pool_name}_pad")(x)
    return keras.layers.MaxPooling2D(3, 2, name=pool_name)(x)


# ---------------------------------------------------------------------------------------------- builders
def _build(arch: str, blocks, block_fn, *, input_shape, include_top, weights, input_tensor, pooling, classes,
           stem_pool, imagenet_weights, name):
    if stem_pool not in STEM_POOLS:
        raise ConfigError(f"stem_pool={stem_pool!r}: use one of {STEM_POOLS}")
    if pooling not in (None, "avg", "max"):
        raise ConfigError(f"pooling={pooling!r}: use None, 'avg' or 'max'")
    if input_tensor is None:
        if input_shape is None or len(input_shape) != 3:
            raise ConfigError(f"{arch}: pass input_shape=(H, W, C) (channels last) or input_tensor=, "
                              f"got input_shape={input_shape}")
        if any(s is not None and s < 32 for s in input_shape[:2]):
            raise ConfigError(f"{arch}: input_shape {tuple(input_shape)} is below the 32 px minimum (stride 32)")
        inputs = [keras.Input(shape=tuple(input_shape), name="image")]
        x = inputs[0]
    else:
        inputs = keras.utils.get_source_inputs(input_tensor)
        x = input_tensor
    is_cadene = arch == "se_resnext50_32x4d"
    x = _stem(x, "layer0" if is_cadene else "", stem_pool, ceil_mode=is_cadene)
    for i, (n, planes) in enumerate(zip(blocks, PLANES), start=1):
        for j in range(n):
            x = block_fn(x, planes, 2 if (i > 1 and j == 0) else 1, f"layer{i}_{j}")
        x = keras.layers.Identity(name=f"layer{i}")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
        x = keras.layers.Dense(classes, dtype="float32", name="last_linear" if is_cadene else "fc")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="maxpool_global")(x)
    model = keras.Model(inputs[0] if len(inputs) == 1 else inputs, x, name=name or arch)
    if weights is not None:
        _load_weights(model, arch, weights, imagenet_weights=imagenet_weights)
    return model


def resnet18(input_shape=None, include_top: bool = False, weights=None, *, input_tensor=None, pooling=None,
             classes: int = 1000, stem_pool: str = "max3x3", imagenet_weights=None, name: str | None = None):
    """torchvision ``resnet18`` (BasicBlock ×(2, 2, 2, 2)), PyTorch-mappable layer names (module docstring).

    Args:
        input_shape: (H, W, C) channels-last, H, W >= 32 (or None spatial dims); ignored with ``input_tensor``.
        include_top: add ``avgpool`` + ``fc`` Dense(classes) (float32 logits).
        weights: None (random), ``"imagenet"`` (needs ``imagenet_weights``; a C != 3 stem is widened with the
            red-copy rule), or a ``.weights.h5`` file of this exact model.
        input_tensor: a Keras tensor to build on (the layers join its graph, as in ``keras.applications``).
        pooling: without the top: None (4-D map), ``"avg"`` or ``"max"`` global pooling.
        classes: outputs of ``fc``.
        stem_pool: ``"max3x3"`` (torchvision) or ``"max2x2"`` (Team 1's variant).
        imagenet_weights: path of the torchvision checkpoint (``.pth``, needs torch, or ``.npz`` of the state_dict).
        name: the Keras model name.

    Returns:
        keras.Model: (B, H, W, C) float -> (B, H/32, W/32, 512) (no top, no pooling), (B, 512) pooled, or
        (B, classes) float32 logits. Stage outputs: layers ``layer1`` .. ``layer4`` (strides 4, 8, 16, 32).
    """
    return _build("resnet18", RESNET18_BLOCKS, basic_block, input_shape=input_shape, include_top=include_top,
                  weights=weights, input_tensor=input_tensor, pooling=pooling, classes=classes, stem_pool=stem_pool,
                  imagenet_weights=imagenet_weights, name=name)


def resnet34(input_shape=None, include_top: bool = False, weights=None, *, input_tensor=None, pooling=None,
             classes: int = 1000, stem_pool: str = "max3x3", imagenet_weights=None, name: str | None = None):
    """torchvision ``resnet34`` (BasicBlock ×(3, 4, 6, 3)); arguments and outputs as `resnet18` (512 channels)."""
    return _build("resnet34", RESNET34_BLOCKS, basic_block, input_shape=input_shape, include_top=include_top,
                  weights=weights, input_tensor=input_tensor, pooling=pooling, classes=classes, stem_pool=stem_pool,
                  imagenet_weights=imagenet_weights, name=name)


def se_resnext50_32x4d(input_shape=None, include_top: bool = False, weights=None, *, input_tensor=None,
                       pooling=None, classes: int = 1000, stem_pool: str = "max3x3", imagenet_weights=None,
                       name: str | None = None):
    """Cadene ``se_resnext50_32x4d`` (SEResNeXtBottleneck ×(3, 4, 6, 3), groups 32, width 4, SE reduction 16).

    Arguments as `resnet18`; the classifier is ``last_linear``, the stem ``layer0_*`` with a ceil-mode max-pool.
    Returns (B, H/32, W/32, 2048) (no top, no pooling), (B, 2048) pooled, or (B, classes) float32 logits.
    """
    return _build("se_resnext50_32x4d", SE_RESNEXT50_BLOCKS, se_resnext_block, input_shape=input_shape,
                  include_top=include_top, weights=weights, input_tensor=input_tensor, pooling=pooling,
                  classes=classes, stem_pool=stem_pool, imagenet_weights=imagenet_weights, name=name)


BUILDERS = {"resnet18": resnet18, "resnet34": resnet34, "se_resnext50_32x4d": se_resnext50_32x4d}


# ---------------------------------------------------------------------------------------------- torch mapping
def torch_module_name(layer_name: str) -> str:
    """Keras layer name -> PyTorch module name: ``layer1_0_downsample_0`` -> ``layer1.0.downsample.0``,
    ``layer2_3_se_module_fc1`` -> ``layer2.3.se_module.fc1``, ``layer0_bn1`` -> ``layer0.bn1``, ``conv1`` -> itself."""
    m = re.fullmatch(r"(layer\d)_(\d+)_(.+)", layer_name)
    if m:
        stage, block, rest = m.groups()
        rest = re.sub(r"^downsample_(\d)$", r"downsample.\1", rest)
        rest = re.sub(r"^se_module_", "se_module.", rest)
        return f"{stage}.{block}.{rest}"
    return re.sub(r"^layer0_", "layer0.", layer_name)


def torch_name_map(model) -> dict[str, str]:
    """Every weight of a backbone from this module -> its torch ``state_dict`` key.

    Args:
        model: a model from `resnet18` / `resnet34` / `se_resnext50_32x4d` (may be part of a larger graph: layers
            that are not Conv2D / BatchNormalization / Dense, or whose names are not ResNet names, are skipped).

    Returns:
        dict ``{keras variable path ("layer1_0_conv1/kernel"): torch key ("layer1.0.conv1.weight")}``, in layer order.
    """
    out = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            table = _BN_VARS
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            table = _DENSE_CONV_VARS
        else:
            continue
        if not _is_resnet_name(layer.name):
            continue
        module = torch_module_name(layer.name)
        for v in layer.weights:
            out[v.path] = f"{module}.{table[v.name]}"
    return out


def _is_resnet_name(name: str) -> bool:
    return bool(re.fullmatch(r"conv1|bn1|fc|last_linear|layer0_(conv1|bn1)|layer[1-4]_\d+_\w+", name))


def load_torch_state_dict(model, state_dict, *, skip_classifier: bool | None = None) -> list[str]:
    """Copy a PyTorch ``state_dict`` into a backbone from this module; everything is checked before writing.

    Conv kernels OIHW -> HWIO (grouped convs: torch (O, I/groups, kh, kw) -> Keras (kh, kw, I/groups, O)), Linear
    (O, I) -> (I, O); BN weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance.
    ``num_batches_tracked`` buffers are ignored, and a ``module.`` prefix (``DataParallel`` checkpoints) is stripped.

    Args:
        model: Keras model built by `resnet18` / `resnet34` / `se_resnext50_32x4d` (channel count must match the
            checkpoint's stem: load a 3-channel model, then widen with `zoo_models.surgery`).
        state_dict: mapping key -> ``torch.Tensor`` or array.
        skip_classifier: ignore the checkpoint's ``fc.*`` / ``last_linear.*`` tensors; default: when the model has
            no ``fc`` / ``last_linear`` layer (``include_top=False`` with an ImageNet checkpoint).

    Returns:
        list of the torch keys that were loaded.

    Raises:
        WeightsError: a model weight without a tensor, a tensor without a model weight, or a shape mismatch;
            the message names the tensor(s) and the shapes.
    """
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()
          if not k.endswith("num_batches_tracked")}
    names = torch_name_map(model)
    if skip_classifier is None:
        layer_names = {layer.name for layer in model.layers}
        skip_classifier = not any(c in layer_names for c in _CLASSIFIERS)
    if skip_classifier:
        sd = {k: v for k, v in sd.items() if k.split(".")[0] not in _CLASSIFIERS}
    missing = [t for t in names.values() if t not in sd]
    unused = sorted(set(sd) - set(names.values()))
    if missing or unused:
        raise WeightsError(f"state_dict does not fit {model.name!r}: missing tensors {missing[:8]}"
                           f"{' ...' if len(missing) > 8 else ''} ({len(missing)}), unused tensors {unused[:8]}"
                           f"{' ...' if len(unused) > 8 else ''} ({len(unused)}). Use the checkpoint of the same "
                           f"architecture (IMAGENET_URLS) and a model with the same include_top.")
    by_path = {v.path: v for v in model.weights}
    plan = []
    for path, key in names.items():
        value = _to_keras_layout(_to_numpy(sd[key]))
        var = by_path[path]
        if tuple(value.shape) != tuple(var.shape):
            raise WeightsError(f"tensor {key!r} has shape {tuple(_to_numpy(sd[key]).shape)} (-> {value.shape} in Keras "
                               f"layout) but {model.name!r} weight {path!r} has shape {tuple(var.shape)}; wrong "
                               f"architecture, classes or input channels (load a 3-channel model, then widen the "
                               f"stem with zoo_models.surgery)")
        plan.append((var, value))
    for var, value in plan:
        var.assign(value.astype(var.dtype))
    return list(names.values())


def _to_numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t)


def _to_keras_layout(a: np.ndarray) -> np.ndarray:
    if a.ndim == 4:  # OIHW -> HWIO
        return np.transpose(a, (2, 3, 1, 0))
    if a.ndim == 2:  # Linear (out, in) -> Dense (in, out)
        return a.T
    return a


def read_state_dict(path) -> dict[str, np.ndarray]:
    """A PyTorch checkpoint as ``{key: np.ndarray}``: ``.pth``/``.pt`` (needs torch) or ``.npz`` (no torch needed).

    Raises:
        WeightsError: missing file, unknown suffix, or torch not installed for a ``.pth``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"checkpoint {path!r} does not exist; download it (e.g. {IMAGENET_URLS['resnet34']}) "
                           f"and pass its path")
    if path.endswith(".npz"):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if not path.endswith((".pth", ".pt")):
        raise WeightsError(f"checkpoint {path!r}: expected a .pth/.pt PyTorch state_dict or an .npz of it")
    try:
        import torch
    except ImportError as exc:
        raise WeightsError(f"reading {path!r} needs PyTorch (pip install torch), or convert it once to .npz: "
                           f"np.savez(out, **{{k: v.numpy() for k, v in torch.load(path).items()}})") from exc
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return {k: _to_numpy(v) for k, v in sd.items()}


def _load_weights(model, arch, weights, *, imagenet_weights):
    if weights == "imagenet":
        if imagenet_weights is None:
            raise WeightsError(f"{arch}(weights='imagenet') needs imagenet_weights=<path of the PyTorch checkpoint>; "
                               f"download {IMAGENET_URLS[arch]} (no automatic download: no sha256 is pinned)")
        transplant_imagenet(model, arch, imagenet_weights)
        return
    path = os.fspath(weights)
    if not path.endswith(".weights.h5") or not os.path.isfile(path):
        raise WeightsError(f"weights={weights!r}: expected None, 'imagenet' or an existing .weights.h5 file of "
                           f"this model")
    model.load_weights(path)


def transplant_imagenet(model, arch: str, checkpoint, *, rule: str = "copy_red", first_conv: str | None = None):
    """Fill the ``arch`` layers of ``model`` (any input channels; may be part of a larger graph) from a 3-channel
    PyTorch ImageNet checkpoint: build the 3-channel ``arch`` backbone, `load_torch_state_dict`, then
    `zoo_models.surgery.transplant_weights` by name with the stem widened by ``rule`` (teams.md §3.2: red copy).

    Args:
        model: keras.Model containing the ``arch`` layers under their standard names (other layers are untouched).
        arch: ``"resnet18"``, ``"resnet34"`` or ``"se_resnext50_32x4d"``.
        checkpoint: path (``.pth`` / ``.npz``) or an already-read state_dict.
        rule: stem rule of `zoo_models.surgery.widen_stem_kernel`.
        first_conv: the stem conv name in ``model``; default `FIRST_CONV` [arch].

    Returns:
        `zoo_models.surgery.TransplantReport`.
    """
    from zoo_models import surgery

    if arch not in BUILDERS:
        raise ConfigError(f"arch={arch!r}: use one of {sorted(BUILDERS)}")
    sd = read_state_dict(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    src = BUILDERS[arch]((64, 64, 3), include_top=False, name=f"{arch}_imagenet_source")
    load_torch_state_dict(src, sd, skip_classifier=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return surgery.transplant_weights(src, model, first_conv=first_conv or FIRST_CONV[arch], rule=rule,
                                          match="name")
