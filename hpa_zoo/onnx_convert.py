"""ONNX initialisers -> Keras weights, for Team 1's published model (teams.md §1.8, the bioimage.io package).

The package ships one ONNX file exported from PyTorch (``image`` (1, 4, 1024, 1024) float32 = uint8/255, NCHW;
outputs ``classes`` = sigmoid probabilities (1, 28) and ``features`` (1, 1024)). `onnx_to_keras_weights` fills the
Keras model of `zoo_models.team1_bestfitting.build_densenet121` (``large=True`` for the package) from it.

How the mapping works (no reliance on the exporter's tensor names, which constant folding renames):

* The weighted ONNX nodes (Conv, BatchNormalization, Gemm, MatMul[+Add]) are taken in graph order, the weighted
  Keras layers (Conv2D, BatchNormalization, Dense) in model order, and paired one by one. Every shape is checked;
  any mismatch, any layer left over on either side and any float initialiser not consumed raise a
  `WeightsError` naming the ONNX tensor, the Keras weight and both shapes.
* Layouts: Conv OIHW -> Keras HWIO; Gemm B (out, in) with ``transB=1`` (or (in, out) with ``transB=0`` / MatMul)
  -> Dense kernel (in, out).
* BatchNorm folded into the preceding Conv (the TorchScript exporter's default ``do_constant_folding=True`` folds
  ``features.conv0+norm0`` and every dense layer's ``conv1+norm2``): the ONNX Conv then has a bias and no BN
  follows; the Keras Conv2D (no bias) gets the folded kernel and its BatchNormalization becomes the identity plus
  that bias (gamma 1, beta b, mean 0, variance 1 - eps). Unfolded exports map BN to BN directly. Both exports give
  the same outputs within float32 rounding.
* BN epsilon: Keras' DenseNet uses 1.001e-5, torch 1e-5. The difference is moved into the moving variance
  (``var_keras = var_onnx + eps_onnx - eps_keras``) so ``sqrt(var + eps)`` is the ONNX value and the result
  survives a ``.weights.h5`` round trip (the epsilon attribute itself is not saved with the weights).
* Pooling layers carry no weights, so a ``large`` ONNX file would fit a non-``large`` Keras model weight for
  weight; the sequence of trunk pooling layers (kind, kernel, stride) is compared as well.
* The normalisation inside the network (teams.md §1.2, RGBY mean/std) is not a weight: the ONNX nodes before the
  first Conv are evaluated on a probe input (``onnx.reference``) and compared with the Keras model's own
  normalisation layers applied to probe·255 (the Keras model takes [0, 255] images); a difference is an error.

Converted weights are cached as ``.weights.h5`` by the caller (`hpa_zoo.models_api`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from hpa_zoo.errors import WeightsError

_REMEDY = ("Build the Keras model with the same architecture as the ONNX file (Team 1's published package: "
           "zoo_models.team1_bestfitting.build_densenet121(num_classes=28, large=True)).")
_PROBE_TOL = 1e-4
#: ops whose scalar float inputs are hyper-parameters, not learned weights (Dropout ratio, Clip bounds ...)
_HYPERPARAM_OPS = frozenset({"Dropout", "Clip", "Pad", "Resize", "ConstantOfShape", "LeakyRelu", "Pow"})  # max abs difference (normalised units) between ONNX and Keras input normalisation


@dataclass
class _OnnxOp:
    """One weighted ONNX node, with its arrays already in Keras layout."""

    kind: str  # "conv" | "bn" | "dense"
    node: str  # node name (or op type + index) for messages
    output: str  # the tensor this op produces (BN-after-conv detection)
    data_input: str  # the tensor it consumes
    arrays: dict[str, np.ndarray]  # Keras-layout arrays: kernel/bias or gamma/beta/mean/var
    sources: dict[str, str]  # array key -> ONNX tensor name
    attrs: dict = field(default_factory=dict)


def onnx_to_keras_weights(onnx_path: str | os.PathLike, keras_model) -> None:
    """Load the weights of the ONNX file at `onnx_path` into `keras_model` (in place; all or nothing).

    Args:
        onnx_path: ONNX model exported from PyTorch, input NCHW float32 in [0, 1] (image / 255), e.g. the
            bioimage.io ``densenet_model.onnx`` of Team 1 (teams.md §1.8).
        keras_model: a Keras model with the same layers, channels-last, taking [0, 255] images, e.g.
            ``build_densenet121(num_classes=28, input_shape=(1024, 1024, 4), large=True)``; any input size works.

    After the call, ``sigmoid(keras_model(255 * x_nhwc))`` equals the ONNX ``classes`` output for ``x`` (float32
    rounding) and the ``head_dropout2`` layer output equals ONNX ``features``.

    Raises:
        WeightsError: unreadable file, different architecture (names the ONNX tensor, the Keras weight and both
            shapes), unused ONNX initialisers, Keras layers the ONNX file has no weights for, or a different input
            normalisation. The Keras model is left unchanged.
    """
    import onnx

    path = os.fspath(onnx_path)
    try:
        model = onnx.load(path)
    except Exception as exc:  # onnx raises DecodeError, OSError ...
        raise WeightsError(f"cannot read ONNX file {path}: {exc}. Download it again (hpa_zoo.weights.fetch "
                           "verifies its sha256).") from exc
    graph = model.graph
    consts, aliases = _constants(graph)
    ops, used = _weighted_ops(graph, consts, path)
    if not ops or ops[0].kind != "conv":
        raise WeightsError(f"{path}: expected the first weighted node to be a Conv (the stem), found "
                           f"{ops[0].node if ops else 'no weighted nodes'}. {_REMEDY}")
    used |= _check_normalisation(model, consts, ops[0].data_input, keras_model, path)
    _check_pooling(graph, keras_model, path)
    _check_all_used(graph, consts, aliases, used | {aliases[n] for n in used if n in aliases}, path)
    assignments = _pair(ops, keras_model, path)
    for variable, value in assignments:  # only after every check passed: all or nothing
        variable.assign(value)


# ---------------------------------------------------------------------------------------------- ONNX side
def _constants(graph) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Initialisers and Constant-node outputs by tensor name, plus aliases: the TorchScript exporter stores
    identical tensors once and reads them through ``Identity`` nodes (alias output -> stored name)."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    aliases: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
        elif node.op_type == "Identity" and node.input[0] in consts:
            root = aliases.get(node.input[0], node.input[0])
            consts[node.output[0]] = consts[root]
            aliases[node.output[0]] = root
    return consts, aliases


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _weighted_ops(graph, consts: dict, path: str) -> tuple[list[_OnnxOp], set[str]]:
    """The weighted nodes in graph order, converted to Keras layouts, and the constant names they consume."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ops: list[_OnnxOp] = []
    used: set[str] = set()

    def const(node, i: int, what: str) -> np.ndarray:
        name = node.input[i] if i < len(node.input) else ""
        if name not in consts:
            raise WeightsError(f"{path}: {node.op_type} node {node.name!r} takes its {what} from {name!r}, which is "
                               "computed in the graph rather than stored; only exported (constant) weights can be "
                               "converted. Re-export the model in eval mode.")
        used.add(name)
        return consts[name]

    for index, node in enumerate(graph.node):
        label = node.name or f"{node.op_type}#{index}"
        if node.op_type == "Conv":
            a = _attrs(node)
            if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
                raise WeightsError(f"{path}: Conv {label!r} has group={a.get('group', 1)} / dilations="
                                   f"{a.get('dilations')}; Team 1's DenseNet has none. {_REMEDY}")
            w = const(node, 1, "weight")
            arrays = {"kernel": np.transpose(w, (2, 3, 1, 0))}  # OIHW -> HWIO
            sources = {"kernel": node.input[1]}
            if len(node.input) > 2 and node.input[2]:
                arrays["bias"], sources["bias"] = const(node, 2, "bias"), node.input[2]
            ops.append(_OnnxOp("conv", label, node.output[0], node.input[0], arrays, sources,
                               {"strides": tuple(a.get("strides", [1, 1]))}))
        elif node.op_type == "BatchNormalization":
            keys = ("gamma", "beta", "moving_mean", "moving_variance")
            arrays = {k: const(node, i + 1, k) for i, k in enumerate(keys)}
            sources = {k: node.input[i + 1] for i, k in enumerate(keys)}
            ops.append(_OnnxOp("bn", label, node.output[0], node.input[0], arrays, sources,
                               {"epsilon": float(_attrs(node).get("epsilon", 1e-5))}))
        elif node.op_type == "Gemm":
            a = _attrs(node)
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                raise WeightsError(f"{path}: Gemm {label!r} has transA/alpha/beta {a}; only x @ W (+ b) maps to a "
                                   "Keras Dense layer")
            w = const(node, 1, "weight")
            arrays = {"kernel": w.T if a.get("transB", 0) else w}  # torch Linear (out, in) -> Dense (in, out)
            sources = {"kernel": node.input[1]}
            if len(node.input) > 2 and node.input[2]:
                arrays["bias"], sources["bias"] = const(node, 2, "bias").reshape(-1), node.input[2]
            ops.append(_OnnxOp("dense", label, node.output[0], node.input[0], arrays, sources))
        elif node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in consts:
            arrays = {"kernel": const(node, 1, "weight")}
            sources = {"kernel": node.input[1]}
            output = node.output[0]
            nxt = consumers.get(output, [])
            if len(nxt) == 1 and nxt[0].op_type == "Add":
                add = nxt[0]
                other = [n for n in add.input if n != output]
                if len(other) == 1 and other[0] in consts:
                    arrays["bias"], sources["bias"] = consts[other[0]].reshape(-1), other[0]
                    used.add(other[0])
                    output = add.output[0]
            ops.append(_OnnxOp("dense", label, output, node.input[0], arrays, sources))
    return ops, used


def _check_all_used(graph, consts: dict, aliases: dict, used: set[str], path: str) -> None:
    """Every float constant must have been mapped. Integer constants (shapes/axes of Reshape, Unsqueeze ...),
    aliases and scalar hyper-parameters of `_HYPERPARAM_OPS` (e.g. a Dropout ratio) are not weights."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def is_weight(name: str, value: np.ndarray) -> bool:
        if name in used or name in aliases or not np.issubdtype(value.dtype, np.floating):
            return False
        users = consumers.get(name, [])
        return not (value.size <= 1 and users and all(n.op_type in _HYPERPARAM_OPS for n in users))

    unused = [n for n, v in consts.items() if is_weight(n, v)]
    if unused:
        def who(name: str) -> str:
            return ", ".join(f"{n.op_type} {n.name!r}" for n in consumers.get(name, [])) or "no node"

        listed = "; ".join(f"{n} {consts[n].shape} used by {who(n)}" for n in unused[:10])
        raise WeightsError(f"{path}: {len(unused)} ONNX initialiser(s) have no place in the Keras model: {listed}. "
                           f"The file is not Team 1's DenseNet121 classifier or was exported differently. {_REMEDY}")


def _check_normalisation(model, consts: dict, stem_input: str, keras_model, path: str) -> set[str]:
    """Compare the ONNX pre-stem computation with the Keras normalisation on a probe; return the constants used."""
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        raise WeightsError(f"{path}: expected one image input, found {[i.name for i in inputs]}")
    image = inputs[0]
    if image.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise WeightsError(f"{path}: input {image.name!r} is not float32; expected image/255 float32 NCHW "
                           "(teams.md §1.8)")
    needed, stack, used = [], [stem_input], set()
    while stack:
        name = stack.pop()
        if name in consts:
            used.add(name)
        node = producers.get(name)
        if node is not None and node not in needed:
            needed.append(node)
            stack.extend(n for n in node.input if n)
    rng = np.random.default_rng(0)
    channels = _keras_input_channels(keras_model)
    probe = rng.uniform(0.0, 1.0, (1, channels, 6, 6)).astype(np.float32)
    if needed:
        order = [n for n in graph.node if n in needed]  # keep graph (topological) order
        sub = helper.make_graph(
            order, "prestem", [helper.make_tensor_value_info(image.name, TensorProto.FLOAT, list(probe.shape))],
            [helper.make_tensor_value_info(stem_input, TensorProto.FLOAT, None)],
            [t for t in graph.initializer if t.name in used])
        sub_model = helper.make_model(sub, opset_imports=list(model.opset_import))
        sub_model.ir_version = model.ir_version
        onnx_out = ReferenceEvaluator(sub_model).run(None, {image.name: probe})[0]
    else:
        onnx_out = probe
    keras_out = _keras_prestem(keras_model, np.transpose(probe, (0, 2, 3, 1)) * 255.0)
    onnx_out = np.transpose(np.asarray(onnx_out, np.float32), (0, 2, 3, 1))
    if keras_out.shape != onnx_out.shape:
        raise WeightsError(f"{path}: the ONNX computation before the stem Conv gives shape {onnx_out.shape} (NHWC) for "
                           f"a {probe.shape} NCHW probe, the Keras model's normalisation {keras_out.shape}")
    diff = float(np.max(np.abs(keras_out - onnx_out)))
    if diff > _PROBE_TOL:
        ratio = (onnx_out.reshape(-1, channels).std(0) / np.maximum(keras_out.reshape(-1, channels).std(0), 1e-12))
        raise WeightsError(f"{path}: the ONNX file normalises its input differently from the Keras model (max abs "
                           f"difference {diff:.3g} on a probe; per-channel scale ratio {np.round(ratio, 4)}). "
                           "Expected ONNX input = image/255 (teams.md §1.8) and the same RGBY mean/std (§1.2).")
    return used


def _check_pooling(graph, keras_model, path: str) -> None:
    """The trunk's pooling layers (before the last Conv) must agree in kind, kernel and stride (the ``large``
    variant differs from the normal one only by an extra weightless 2x2 max-pool, teams.md §1.2)."""
    import keras

    last_conv = max(i for i, n in enumerate(graph.node) if n.op_type == "Conv")
    onnx_pools = []
    for node in graph.node[:last_conv]:
        if node.op_type in ("MaxPool", "AveragePool"):
            a = _attrs(node)
            kind = "max" if node.op_type == "MaxPool" else "avg"
            onnx_pools.append((kind, tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1]))))
    keras_layers = keras_model.layers
    last_keras = max(i for i, l in enumerate(keras_layers) if isinstance(l, keras.layers.Conv2D))
    keras_pools = []
    for layer in keras_layers[:last_keras]:
        if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
            kind = "max" if isinstance(layer, keras.layers.MaxPooling2D) else "avg"
            keras_pools.append((kind, tuple(layer.pool_size), tuple(layer.strides)))
    if onnx_pools != keras_pools:
        raise WeightsError(f"{path}: the trunk's pooling layers differ: ONNX (kind, kernel, stride) {onnx_pools}, "
                           f"Keras {keras_pools}. An extra ('max', (2, 2), (2, 2)) is the `large` variant. {_REMEDY}")


def _keras_input_channels(keras_model) -> int:
    shape = keras_model.inputs[0].shape
    if len(shape) != 4 or shape[-1] is None:
        raise WeightsError(f"Keras model {keras_model.name!r} input shape {tuple(shape)}: expected (B, H, W, C)")
    return int(shape[-1])


def _keras_prestem(keras_model, x_nhwc: np.ndarray) -> np.ndarray:
    """Apply the Keras layers between the input and the first Conv2D, skipping zero padding (the ONNX Conv pads
    itself). They must be shape-preserving (normalisation, rescaling, casts)."""
    import keras

    x = keras.ops.convert_to_tensor(x_nhwc.astype(np.float32))
    for layer in keras_model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            break
        if isinstance(layer, (keras.layers.InputLayer, keras.layers.ZeroPadding2D)):
            continue
        y = layer(x)
        if tuple(y.shape) != tuple(x.shape):
            raise WeightsError(f"Keras layer {layer.name!r} before the stem changes the shape {tuple(x.shape)} -> "
                               f"{tuple(y.shape)}; the converter expects only per-pixel normalisation there")
        x = y
    return np.asarray(keras.ops.convert_to_numpy(x), np.float32)


# ---------------------------------------------------------------------------------------------- pairing
def _pair(ops: list[_OnnxOp], keras_model, path: str) -> list[tuple[object, np.ndarray]]:
    """Pair ONNX ops with Keras layers; return (variable, value) assignments. Raises on any mismatch."""
    import keras

    layers = _weighted_keras_layers(keras_model)
    out: list[tuple[object, np.ndarray]] = []
    i = 0
    pending_bias: tuple[_OnnxOp, np.ndarray] | None = None  # folded-BN bias waiting for the Keras BN

    def take(kind: str, layer) -> _OnnxOp:
        nonlocal i
        if i >= len(ops):
            raise WeightsError(f"{path}: the ONNX file has no more weighted nodes, but Keras layer {layer.name!r} "
                               f"({type(layer).__name__}) still needs weights; the Keras model is larger. {_REMEDY}")
        op = ops[i]
        if op.kind != kind:
            raise WeightsError(f"{path}: ONNX node {op.node!r} ({op.kind}, tensors {list(op.sources.values())}) "
                               f"meets Keras layer {layer.name!r} ({type(layer).__name__}); the layer sequences "
                               f"differ. {_REMEDY}")
        i += 1
        return op

    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization) and pending_bias is not None:
            conv_op, bias = pending_bias
            pending_bias = None
            if i < len(ops) and ops[i].kind == "bn" and ops[i].data_input == conv_op.output:
                op = take("bn", layer)  # a real BN after a conv with bias: fold the bias into the mean
                arrays = dict(op.arrays, moving_mean=op.arrays["moving_mean"] - bias)
                out += _bn_assignments(layer, arrays, op.attrs["epsilon"], op.sources, path)
            else:  # BN folded into the ONNX conv: identity BN that adds the conv bias
                arrays = {"gamma": np.ones_like(bias), "beta": bias, "moving_mean": np.zeros_like(bias),
                          "moving_variance": np.ones_like(bias)}
                src = {k: f"{conv_op.sources['bias']} (folded BN)" for k in arrays}
                out += _bn_assignments(layer, arrays, 0.0, src, path)  # var 1 + eps 0 -> keras var 1 - eps
            continue
        if pending_bias is not None:
            conv_op, _ = pending_bias
            raise WeightsError(f"{path}: ONNX Conv {conv_op.node!r} has a bias ({conv_op.sources['bias']}) but Keras "
                               f"Conv2D before {layer.name!r} has none and no BatchNormalization follows it. {_REMEDY}")
        if isinstance(layer, keras.layers.Conv2D):
            op = take("conv", layer)
            if tuple(layer.strides) != op.attrs["strides"]:
                raise WeightsError(f"{path}: ONNX Conv {op.node!r} strides {op.attrs['strides']} vs Keras "
                                   f"{layer.name!r} strides {tuple(layer.strides)}. {_REMEDY}")
            out.append(_checked(layer.kernel, op.arrays["kernel"], op.sources["kernel"], "OIHW->HWIO", path))
            bias = op.arrays.get("bias")
            if layer.use_bias:
                value = bias if bias is not None else np.zeros(layer.bias.shape, np.float32)
                out.append(_checked(layer.bias, value, op.sources.get("bias", "(none: zeros)"), "", path))
            elif bias is not None:
                pending_bias = (op, bias)
        elif isinstance(layer, keras.layers.BatchNormalization):
            op = take("bn", layer)
            out += _bn_assignments(layer, op.arrays, op.attrs["epsilon"], op.sources, path)
        else:  # Dense
            op = take("dense", layer)
            out.append(_checked(layer.kernel, op.arrays["kernel"], op.sources["kernel"], "(out,in)->(in,out)", path))
            if layer.use_bias:
                bias = op.arrays.get("bias", np.zeros(layer.bias.shape, np.float32))
                out.append(_checked(layer.bias, bias, op.sources.get("bias", "(none: zeros)"), "", path))
            elif "bias" in op.arrays:
                raise WeightsError(f"{path}: ONNX {op.node!r} has a bias ({op.sources['bias']}) but Keras Dense "
                                   f"{layer.name!r} has use_bias=False. {_REMEDY}")
    if pending_bias is not None:
        raise WeightsError(f"{path}: ONNX Conv {pending_bias[0].node!r} has a bias with no Keras layer to hold it")
    if i < len(ops):
        rest = ops[i]
        raise WeightsError(f"{path}: {len(ops) - i} weighted ONNX node(s) left after the last Keras layer, first "
                           f"{rest.node!r} ({rest.kind}, tensors {list(rest.sources.values())}, shapes "
                           f"{[a.shape for a in rest.arrays.values()]}); the Keras model is smaller. {_REMEDY}")
    return out


def _weighted_keras_layers(keras_model) -> list:
    """Conv2D / BatchNormalization / Dense layers in model order; other layers with weights are errors, except
    the normalisation layers before the stem (checked by `_check_normalisation`)."""
    import keras

    mapped = (keras.layers.Conv2D, keras.layers.BatchNormalization, keras.layers.Dense)
    layers, seen_conv = [], False
    for layer in keras_model.layers:
        if isinstance(layer, mapped):
            seen_conv = seen_conv or isinstance(layer, keras.layers.Conv2D)
            layers.append(layer)
        elif layer.weights and seen_conv:
            raise WeightsError(f"Keras layer {layer.name!r} ({type(layer).__name__}) has weights "
                               f"{[w.path for w in layer.weights]} that no ONNX node provides; the converter "
                               "fills only Conv2D, BatchNormalization and Dense layers")
    return layers


def _bn_assignments(layer, arrays: dict, onnx_eps: float, sources: dict, path: str) -> list:
    """Keras BN assignments; ONNX epsilon moved into the variance (var + eps_onnx - eps_keras, in float64)."""
    var = arrays["moving_variance"].astype(np.float64) + float(onnx_eps) - float(layer.epsilon)
    values = {"gamma": arrays["gamma"], "beta": arrays["beta"], "moving_mean": arrays["moving_mean"],
              "moving_variance": var.astype(np.float32)}
    out = []
    for key, value in values.items():
        variable = getattr(layer, key, None)
        if variable is None:  # center=False / scale=False: the ONNX value must be the neutral one
            neutral = 1.0 if key == "gamma" else 0.0
            if not np.allclose(value, neutral):
                raise WeightsError(f"{path}: ONNX {sources[key]} is not {neutral} but Keras {layer.name!r} has no "
                                   f"{key} (center/scale=False). {_REMEDY}")
            continue
        out.append(_checked(variable, value, sources[key], "", path))
    return out


def _checked(variable, value: np.ndarray, source: str, layout: str, path: str):
    """(variable, value as float32) after checking the shapes agree."""
    value = np.asarray(value, np.float32)
    expected = tuple(variable.shape)
    if value.shape != expected:
        how = f" after {layout}" if layout else ""
        raise WeightsError(f"{path}: ONNX tensor {source!r} has shape {value.shape}{how}, but Keras weight "
                           f"{variable.path!r} needs {expected}. {_REMEDY}")
    if not np.all(np.isfinite(value)):
        raise WeightsError(f"{path}: ONNX tensor {source!r} contains NaN/inf; the file is corrupted")
    return variable, value
