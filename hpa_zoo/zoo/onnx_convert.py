"""ONNX file -> Keras weights for Team 1's published models, accepted only when the numbers agree.

Team 1's published ONNX files (docs/teams.md §1.8: the bioimage.io package ``densenet_model.onnx`` of the large
1024 model, and the CellProfiling/densenet v0.1.0 release file of the non-large i768/crop512 fold-0 model) take
``image`` (1, 4, H, W) float32 = uint8/255, NCHW, and return ``classes`` = sigmoid probabilities (1, 28) and
``features`` (1, 1024). `onnx_to_keras_weights` fills the Keras model of
`zoo_models.teams.team1_bestfitting.build_densenet121` (``large=True`` for the package) from such a file in three steps:

1. **Architecture.** The number of convolutions and of residual additions is compared first, so that another
   network (DenseNet169, a ResNet) is refused with a message that says so.
2. **Weights.** The weighted ONNX nodes (Conv, BatchNormalization, Gemm, MatMul[+Add]) are taken in graph order,
   the weighted Keras layers (Conv2D, BatchNormalization, Dense) in model order, and paired one by one; every shape
   is checked (no reliance on the exporter's tensor names, which constant folding renames).

   * Layouts: Conv OIHW -> Keras HWIO; Gemm B (out, in) with ``transB=1`` (or (in, out) / MatMul) -> Dense (in, out).
   * BatchNorm folded into the preceding Conv (the TorchScript exporter's ``do_constant_folding=True``): the ONNX
     Conv has a bias and no BN follows; the Keras Conv2D (no bias) gets the folded kernel and its
     BatchNormalization becomes the identity plus that bias. Unfolded exports map BN to BN directly.
   * BN epsilon: Keras' DenseNet uses 1.001e-5, torch 1e-5; the difference is moved into the moving variance so
     ``sqrt(var + eps)`` is the ONNX value and survives a ``.weights.h5`` round trip.
   * Pooling layers carry no weights, so the trunk's pooling sequence (kind, kernel, stride) is compared as well:
     the ``large`` variant differs only by an extra 2x2 max-pool.
3. **Numbers.** The ONNX graph (onnxruntime when installed, else ``onnx.reference``) and the converted Keras model
   are run on three probes: two random images and one HPA-like synthetic field. The file is accepted only if the
   probabilities agree to <= 1e-4 and the features to <= 1e-4 relative (to the largest feature). What the graph
   computes is the check, not its shape: the non-weight constants of a faithful export (the normalisation's
   mean/std, however the exporter spelled the published in-place per-channel loop: Slice/Gather + Sub + Div +
   ScatterND; the ``1`` of ``1 / (1 + exp(-x))``; reshape shapes) are not errors in themselves. A file that fails
   raises `WeightsError` naming the largest difference, the output it occurred in and the most likely cause
   (the input normalisation, a missing sigmoid, another architecture), and the Keras model is left unchanged.

   The probes have the file's declared spatial size (a TorchScript export bakes its input size into the graph,
   e.g. the adaptive max pool becomes a MaxPool whose kernel is the final map and the normalisation loop's
   ScatterND shapes are constants), or 128 px for a file with symbolic spatial dimensions; the Keras model,
   being fully convolutional, is run at that size whatever size it was built for.

`hpa_zoo.zoo.models_api` caches the converted weights as ``.weights.h5`` only after the check passed, with the measured
differences in a ``.check.json`` beside them; `hpa_zoo.zoo.verify_weights.verify` repeats the check on the package's own test
tensors.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from hpa_zoo.errors import WeightsError

log = logging.getLogger(__name__)

_REMEDY = ("Build the Keras model with the same architecture as the ONNX file (Team 1's published package: "
           "zoo_models.teams.team1_bestfitting.build_densenet121(num_classes=28, large=True)).")
#: acceptance: max |p_keras - p_onnx| over the probes, and max |f_keras - f_onnx| / max |f_onnx|
PROB_TOL = 1e-4
FEATURE_REL_TOL = 1e-4
#: side of the probes for a file whose spatial dimensions are symbolic
DEFAULT_PROBE_SIZE = 128
#: Conv counts of networks a user might hand over instead (torchvision layouts), for the architecture message
_KNOWN_CONV_COUNTS = {120: "DenseNet121", 168: "DenseNet169", 200: "DenseNet201", 160: "DenseNet161",
                      20: "ResNet18", 36: "ResNet34", 53: "ResNet50", 104: "ResNet101", 94: "Inception-v3"}


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


@dataclass(frozen=True)
class ConversionCheck:
    """What the numeric check of one conversion measured (all float64 maxima over the probes).

    Attributes:
        onnx_path: the file.
        runtime: ``"onnxruntime"`` or ``"onnx.reference"``.
        probe_shape: (N, H, W, C) of the probes (NHWC, [0, 1] before the Keras model's x255).
        classes_output / features_output: the ONNX output names compared (features None if the file has none).
        max_abs_diff_classes: max |sigmoid(keras logits) - onnx classes|.
        max_abs_diff_features / max_rel_diff_features: max |f_keras - f_onnx| and that / max |f_onnx|.
    """

    onnx_path: str
    runtime: str
    probe_shape: tuple
    classes_output: str
    features_output: str | None
    max_abs_diff_classes: float
    max_abs_diff_features: float | None
    max_rel_diff_features: float | None

    def as_dict(self) -> dict:
        """JSON-ready dict (the ``.check.json`` written beside a converted-weights cache)."""
        return {**asdict(self), "probe_shape": list(self.probe_shape), "prob_tol": PROB_TOL,
                "feature_rel_tol": FEATURE_REL_TOL, "passed": True}

    def summary(self) -> str:
        """One line: the measured differences and on what."""
        feats = ("no features output" if self.features_output is None else
                 f"max |f_keras - f_onnx| = {self.max_abs_diff_features:.3g} "
                 f"({self.max_rel_diff_features:.3g} relative)")
        return (f"max |p_keras - p_onnx| = {self.max_abs_diff_classes:.3g}, {feats} on {self.probe_shape[0]} "
                f"probes of {self.probe_shape[1]}x{self.probe_shape[2]} px ({self.runtime})")


def onnx_to_keras_weights(onnx_path: str | os.PathLike, keras_model) -> ConversionCheck:
    """Load the weights of the ONNX file at `onnx_path` into `keras_model` (in place; all or nothing) and prove
    the conversion numerically (module docstring, step 3).

    Args:
        onnx_path: ONNX model exported from PyTorch, input ``image`` NCHW float32 in [0, 1] (image / 255),
            outputs the class probabilities (B, C) and optionally the features (B, F), e.g. the bioimage.io
            ``densenet_model.onnx`` of Team 1 (docs/teams.md §1.8). Any opset, with or without constant folding.
        keras_model: a Keras model with the same layers, channels-last, taking [0, 255] images and returning
            logits, e.g. ``build_densenet121(num_classes=28, input_shape=(1024, 1024, 4), large=True)``; any input
            size works.

    Returns:
        The `ConversionCheck`: after the call ``sigmoid(keras_model(255 * x_nhwc))`` equals the ONNX ``classes``
        output for ``x`` to its ``max_abs_diff_classes`` and the input of the last Dense layer (Team 1:
        ``head_dropout2``) equals ONNX ``features``.

    Raises:
        WeightsError: unreadable or truncated file; another architecture (conv counts, residual additions); a
            shape that does not fit (names the ONNX tensor, the Keras weight and both shapes); or outputs that
            disagree with the Keras model (names the largest difference, its output and the likely cause). The
            Keras model is then left unchanged.
    """
    path = os.fspath(onnx_path)
    model = _read_onnx(path)
    graph = model.graph
    _check_architecture(graph, keras_model, path)
    consts, _aliases = _constants(graph)
    ops, used = _weighted_ops(graph, consts, path)
    if not ops or ops[0].kind != "conv":
        raise WeightsError(f"{path}: expected the first weighted node to be a Conv (the stem), found "
                           f"{ops[0].node if ops else 'no weighted nodes'}. {_REMEDY}")
    _check_pooling(graph, keras_model, path)
    assignments = _pair(ops, keras_model, path)
    before = [np.array(variable.numpy()) for variable, _ in assignments]
    for variable, value in assignments:
        variable.assign(value)
    try:
        check = check_conversion(model, keras_model, path=path, stem_input=ops[0].data_input,
                                 unmapped=_unmapped_weights(graph, consts, used | set(_aliases)))
    except BaseException:
        for (variable, _), value in zip(assignments, before):  # all or nothing
            variable.assign(value)
        raise
    log.info("%s converted and checked: %s", path, check.summary())
    return check


def _read_onnx(path: str):
    """``onnx.load`` with a `WeightsError` that tells a truncated or foreign file from a missing one."""
    import onnx

    if not os.path.isfile(path):
        raise WeightsError(f"ONNX file {path} does not exist")
    size = os.path.getsize(path)
    try:
        return onnx.load(path)
    except Exception as exc:  # onnx raises DecodeError, OSError ...
        raise WeightsError(f"cannot read ONNX file {path} ({size} bytes): {type(exc).__name__}: {exc}. The file is "
                           "truncated or is not an ONNX model; download it again (hpa_zoo.zoo.weights.fetch "
                           "verifies its sha256).") from exc


# ---------------------------------------------------------------------------------------------- architecture
def _check_architecture(graph, keras_model, path: str) -> None:
    """Compare what identifies a network family before any weight is paired: the number of convolutions and of
    residual additions (an Add of two computed float tensors; DenseNets have none, ResNets one per block)."""
    import keras

    n_conv = sum(node.op_type == "Conv" for node in graph.node)
    n_res = _residual_adds(graph)
    k_conv = sum(isinstance(layer, keras.layers.Conv2D) for layer in keras_model.layers)
    k_res = sum(isinstance(layer, keras.layers.Add) for layer in keras_model.layers)
    if (n_conv, n_res) == (k_conv, k_res):
        return
    guess = _KNOWN_CONV_COUNTS.get(n_conv)
    kind = ("a ResNet-style network (residual additions)" if n_res and not k_res else
            f"looks like {guess}" if guess else "another architecture")
    raise WeightsError(f"{path}: the ONNX graph has {n_conv} convolutions and {n_res} residual additions; Keras model "
                       f"{keras_model.name!r} has {k_conv} and {k_res}. The file is not this architecture ({kind}). "
                       f"{_REMEDY}")


def _residual_adds(graph) -> int:
    """Add nodes whose two inputs are both feature maps computed by the network: each traces back (through
    element-wise and reshaping ops) to a Conv/BN/ReLU/pool output, not to a constant, the graph input, or index
    arithmetic on ``Shape`` outputs (which the normalisation loop's ScatterND export contains)."""
    const_like = {t.name for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    network = {"Conv", "BatchNormalization", "Relu", "MaxPool", "AveragePool"}
    passthrough = {"Add", "Mul", "Sub", "Div", "Reshape", "Expand", "Slice", "Gather", "Concat", "Unsqueeze",
                   "Squeeze", "Cast", "Identity", "Where"}

    def computed_float(name: str, depth: int = 0) -> bool:
        node = producers.get(name)
        if node is None or name in const_like:
            return False
        if node.op_type in network:
            return True
        if node.op_type in passthrough and depth < 6:
            return any(computed_float(i, depth + 1) for i in node.input if i)
        return False  # Shape, Constant, ConstantOfShape, Range, ...: not feature maps

    return sum(node.op_type == "Add" and len(node.input) == 2 and all(computed_float(i) for i in node.input)
               for node in graph.node)


def _unmapped_weights(graph, consts: dict, used: set[str]) -> list[str]:
    """Float constants of more than one element that some node reads but no Keras weight received (a hint for
    the refusal message: extra layers the Keras model does not have)."""
    read = {name for node in graph.node for name in node.input}
    return [f"{name} {tuple(value.shape)}" for name, value in consts.items()
            if name in read and name not in used and np.issubdtype(value.dtype, np.floating) and value.size > 4]


# ---------------------------------------------------------------------------------------------- numbers
def check_conversion(onnx_model, keras_model, *, path: str = "<onnx>", stem_input: str | None = None,
                     unmapped: list[str] | tuple = ()) -> ConversionCheck:
    """Run the ONNX graph and the Keras model on three probes and compare their outputs.

    Args:
        onnx_model: an ``onnx.ModelProto`` taking ``(1, C, H, W)`` float32 in [0, 1], returning probabilities
            (B, K) and optionally features (B, F).
        keras_model: (B, H, W, C) [0, 255] -> logits (B, K); its last Dense layer's input is the feature.
        path: the file, for messages.
        stem_input: the tensor the first Conv reads (for the normalisation diagnosis), if known.
        unmapped: ONNX weight tensors the pairing left unused (for the diagnosis).

    Returns:
        `ConversionCheck` when probabilities agree to `PROB_TOL` and features to `FEATURE_REL_TOL` (relative).

    Raises:
        WeightsError: naming the largest difference, the output it occurred in, and the likely cause.
    """
    runner = _OnnxRunner(onnx_model, path)
    classes_name, features_name = _output_roles(onnx_model, keras_model, path)
    probes = _probes(runner.spatial_size(), runner.channels)
    onnx_classes, onnx_feats = [], []
    for probe in probes:
        out = runner.run(probe[None], [classes_name] + ([features_name] if features_name else []))
        onnx_classes.append(out[0])
        if features_name:
            onnx_feats.append(out[1])
    onnx_classes = np.concatenate(onnx_classes).astype(np.float64)
    logits, feats = _keras_outputs(keras_model, np.transpose(probes, (0, 2, 3, 1)) * 255.0)
    probs = 1.0 / (1.0 + np.exp(-logits))
    diff_p = float(np.max(np.abs(probs - onnx_classes)))
    diff_f = rel_f = None
    if features_name:
        onnx_feats = np.concatenate(onnx_feats).astype(np.float64)
        diff_f = float(np.max(np.abs(feats - onnx_feats)))
        rel_f = diff_f / max(float(np.max(np.abs(onnx_feats))), 1e-12)
    shape = (probes.shape[0], probes.shape[2], probes.shape[3], probes.shape[1])
    if diff_p <= PROB_TOL and (rel_f is None or rel_f <= FEATURE_REL_TOL):
        return ConversionCheck(path, runner.name, shape, classes_name, features_name, diff_p, diff_f, rel_f)
    cause = _diagnose(runner, keras_model, probes, stem_input, logits, onnx_classes, rel_f, unmapped)
    worst = (f"output {classes_name!r}: max |p_keras - p_onnx| = {diff_p:.3g} (tolerance {PROB_TOL:g})"
             if diff_p > PROB_TOL or rel_f is None else
             f"output {features_name!r}: max |f_keras - f_onnx| = {diff_f:.3g}, {rel_f:.3g} relative (tolerance "
             f"{FEATURE_REL_TOL:g})")
    other = ("" if rel_f is None else
             f"; {features_name!r} differs by {rel_f:.3g} relative" if diff_p > PROB_TOL else
             f"; {classes_name!r} differs by {diff_p:.3g}")
    raise WeightsError(f"{path}: the converted Keras model does not compute what the ONNX file computes. Largest "
                       f"difference on {shape[0]} probes of {shape[1]}x{shape[2]} px: {worst}{other}. Most likely: "
                       f"{cause}")


def run_onnx(onnx_path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the ONNX file at `onnx_path` for input `x` (1, C, H, W) float32, by output name
    (onnxruntime when installed, else ``onnx.reference``).

    Raises:
        WeightsError: unreadable file, or the runtime cannot run it on `x` (names the file).
    """
    path = os.fspath(onnx_path)
    model = _read_onnx(path)
    names = [o.name for o in model.graph.output]
    return dict(zip(names, _OnnxRunner(model, path).run(np.asarray(x, np.float32), names)))


def _diagnose(runner, keras_model, probes, stem_input, logits, onnx_classes, rel_f, unmapped) -> str:
    """The most likely reason a check failed, in words: normalisation, a missing sigmoid, or architecture."""
    if stem_input is not None:
        try:
            onnx_pre = np.concatenate([runner.run(p[None], [stem_input])[0] for p in probes]).astype(np.float64)
        except Exception:  # noqa: BLE001 - a diagnosis only; fall through to the other causes
            onnx_pre = None
        if onnx_pre is not None and onnx_pre.shape == (probes.shape[0],) + probes.shape[1:]:
            keras_pre = np.transpose(_keras_prestem(keras_model, np.transpose(probes, (0, 2, 3, 1)) * 255.0),
                                     (0, 3, 1, 2)).astype(np.float64)
            if np.max(np.abs(keras_pre - onnx_pre)) > 1e-4:
                mean_o, std_o = _affine_fit(probes, onnx_pre)
                mean_k, std_k = _affine_fit(probes, keras_pre)
                return (f"the input normalisation: the file normalises its input differently, computing "
                        f"(x - mean) / std with mean "
                        f"{np.round(mean_o, 6).tolist()} and std {np.round(std_o, 6).tolist()} on x = image/255, "
                        f"the Keras model with mean {np.round(mean_k, 6).tolist()} and std "
                        f"{np.round(std_k, 6).tolist()} (Team 1's RGBY statistics, docs/teams.md §1.2). The file is "
                        f"another model, or expects another input scaling.")
    if np.max(np.abs(logits - onnx_classes)) <= 1e-3 * max(1.0, float(np.max(np.abs(logits)))):
        return ("a missing sigmoid: the file's output equals the Keras logits, not their sigmoid (it returns raw "
                "logits). Team 1's packages end in 1 / (1 + exp(-x)); export the model with a sigmoid ending.")
    if onnx_classes.min() < 0.0 or onnx_classes.max() > 1.0:
        return ("the file's class output is not a probability (values outside [0, 1]): it ends in something other "
                "than a sigmoid.")
    hint = f" ONNX weight tensors with no place in the Keras model: {', '.join(unmapped[:5])}." if unmapped else ""
    where = ("the features agree, so the difference is in the classifier" if rel_f is not None and
             rel_f <= FEATURE_REL_TOL else "the features differ too")
    return (f"another architecture or head ({where}).{hint} {_REMEDY}")


def _affine_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the (mean, std) with y = (x - mean) / std, by least squares over the probes (N, C, H, W)."""
    means, stds = [], []
    for c in range(x.shape[1]):
        slope, intercept = np.polyfit(x[:, c].ravel().astype(np.float64), y[:, c].ravel(), 1)
        std = 1.0 / slope if slope else np.inf
        means.append(-intercept * std)
        stds.append(std)
    return np.asarray(means), np.asarray(stds)


def _output_roles(onnx_model, keras_model, path: str) -> tuple[str, str | None]:
    """(classes output name, features output name or None), by name (``classes`` / ``features``) or shape."""
    k_classes = int(keras_model.output_shape[-1])
    outputs = [o.name for o in onnx_model.graph.output]
    dims = {o.name: [d.dim_value or None for d in o.type.tensor_type.shape.dim] for o in onnx_model.graph.output}
    if "classes" in outputs:
        classes = "classes"
    else:
        fits = [n for n in outputs if dims[n] and dims[n][-1] == k_classes]
        if not fits:
            raise WeightsError(f"{path}: no ONNX output has {k_classes} classes (outputs "
                               f"{ {n: dims[n] for n in outputs} }); the Keras model returns {k_classes}. {_REMEDY}")
        classes = fits[0]
    rest = [n for n in outputs if n != classes]
    features = "features" if "features" in rest else (rest[0] if len(rest) == 1 else None)
    return classes, features


def _probes(size: tuple[int, int], channels: int) -> np.ndarray:
    """(3, C, H, W) float32 in [0, 1]: two uniform random images and one HPA-like synthetic field (seeded)."""
    import cv2

    from hpa_zoo.data.synthetic import synthesize_field

    h, w = size
    rng = np.random.default_rng(20190101)
    noise = rng.uniform(0.0, 1.0, (2, channels, h, w)).astype(np.float32)
    side = max(32, max(h, w))
    field_img = synthesize_field([0, 25], size=side, rng=np.random.default_rng(7))  # nucleoplasm + cytosol
    if (side, side) != (h, w):
        field_img = cv2.resize(field_img, (w, h), interpolation=cv2.INTER_LINEAR)
    field_img = np.asarray(field_img, np.float32)[..., :channels] / 255.0
    if field_img.shape[-1] < channels:
        field_img = np.concatenate([field_img, noise[0, field_img.shape[-1]:].transpose(1, 2, 0)], -1)
    return np.concatenate([noise, field_img.transpose(2, 0, 1)[None]]).astype(np.float32)


def _keras_outputs(keras_model, x_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits, features) of the Keras model as float64, run at the probes' size (a layer-sharing clone when the
    model was built for another size). Features = the input of the last Dense layer (Team 1: ``head_dropout2``)."""
    import keras

    dense = [layer for layer in keras_model.layers if isinstance(layer, keras.layers.Dense)]
    inputs = keras_model.inputs[0] if len(keras_model.inputs) == 1 else keras_model.inputs
    outputs = [keras_model.outputs[0]] + ([dense[-1].input] if dense else [])
    model = _at_size(keras.Model(inputs, outputs), x_nhwc.shape[1:3])
    out = model(keras.ops.convert_to_tensor(x_nhwc.astype(np.float32)), training=False)
    out = [np.asarray(keras.ops.convert_to_numpy(o), np.float64) for o in (out if isinstance(out, list) else [out])]
    return out[0], (out[1] if len(out) > 1 else None)


def _at_size(keras_model, hw) -> object:
    """`keras_model` itself if it takes (H, W) = `hw`, else a functional clone at that size that shares its layers
    (and so its weights)."""
    import keras

    shape = tuple(keras_model.inputs[0].shape[1:])
    if tuple(shape[:2]) == tuple(hw) or shape[0] is None:
        return keras_model
    inp = keras.Input((int(hw[0]), int(hw[1]), int(shape[-1])))
    return keras.models.clone_model(keras_model, input_tensors=inp, clone_function=lambda layer: layer)


class _OnnxRunner:
    """Runs an ONNX model with onnxruntime when installed, else ``onnx.reference`` (pure NumPy, slow), returning
    any graph tensor by name (intermediate tensors are added as graph outputs)."""

    def __init__(self, onnx_model, path: str) -> None:
        from onnx import TensorProto

        consts = {t.name for t in onnx_model.graph.initializer}
        inputs = [i for i in onnx_model.graph.input if i.name not in consts]
        if len(inputs) != 1:
            raise WeightsError(f"{path}: expected one image input, found {[i.name for i in inputs]}")
        self.input = inputs[0]
        if self.input.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise WeightsError(f"{path}: input {self.input.name!r} is not float32; expected image/255 float32 NCHW "
                               "(docs/teams.md §1.8)")
        dims = self.input.type.tensor_type.shape.dim
        if len(dims) != 4:
            raise WeightsError(f"{path}: input {self.input.name!r} has {len(dims)} dimensions; expected NCHW")
        self.channels = dims[1].dim_value or 4
        self._hw = tuple(d.dim_value or None for d in dims[2:])
        self.model, self.path = onnx_model, path
        self._sessions: dict[tuple, object] = {}
        try:
            import onnxruntime  # noqa: F401

            self.name = "onnxruntime"
        except ImportError:
            self.name = "onnx.reference"
            log.warning("onnxruntime is not installed: checking %s with onnx.reference (slow; pip install "
                        "onnxruntime)", path)

    def spatial_size(self) -> tuple[int, int]:
        """The file's declared (H, W), or `DEFAULT_PROBE_SIZE` square for symbolic dimensions."""
        return self._hw if all(self._hw) else (DEFAULT_PROBE_SIZE, DEFAULT_PROBE_SIZE)

    def run(self, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """Tensors `names` for input `x` (1, C, H, W) float32."""
        key = tuple(names)
        if key not in self._sessions:
            self._sessions[key] = self._session(names)
        run = self._sessions[key]
        try:
            return [np.asarray(o) for o in run(x)]
        except Exception as exc:  # noqa: BLE001 - the runtime's own error, with the file named
            raise WeightsError(f"{self.path}: {self.name} cannot run the ONNX file on a {tuple(x.shape)} input: "
                               f"{str(exc).splitlines()[0][:300]}. The file is corrupted or not a float32 NCHW image "
                               "model") from exc

    def _session(self, names: list[str]):
        from onnx import helper

        model = self.model
        declared = {o.name for o in model.graph.output}
        if any(n not in declared for n in names):
            import onnx

            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in declared)
        feed = self.input.name
        if self.name == "onnxruntime":
            import onnxruntime as ort

            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return lambda x: sess.run(names, {feed: x})
        from onnx.reference import ReferenceEvaluator

        ref = ReferenceEvaluator(model)
        return lambda x: ref.run(names, {feed: x})


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
    the normalisation layers before the stem (checked by the numeric check)."""
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
