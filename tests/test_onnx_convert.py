"""hpa_zoo.zoo.onnx_convert against independent PyTorch references exported the way the published files were made.

The references (`tests/torch_refs/bestfitting_densenet.py`, plain PyTorch) get random weights and BN statistics
and are exported with the TorchScript exporter in eval mode (input ``image`` 1x4xHxW = uint8/255, outputs
``classes`` = probabilities and ``features``; docs/teams.md §1.8):

* the **published form** (`PublishedDensenet`: in-place per-channel normalisation loop, adaptive pools created in
  forward, torchvision module names, ``1 / (1 + exp(-x))`` ending) at opsets 11, 13 and 17, with and without
  constant folding, in the large 1024 package layout and the non-large release-file layout (opset 9 cannot
  export the in-place loop at all, which is tested too: the published files are opset >= 11);
* the **tidy form** (`BestfittingDensenet`: broadcast buffers, ``torch.sigmoid``) at opset 9 and the default.

Each export is converted into the Keras Team 1 model and the Keras outputs on the real HPA samples are compared
with onnxruntime's. Files that are not Team 1's model are refused, each with its own message.
"""
from __future__ import annotations

import numpy as np
import pytest
import keras
import onnx
import onnxruntime as ort
import torch

from hpa_zoo.errors import WeightsError
from hpa_zoo.data.images import load_rgby
from hpa_zoo.data.labels import read_labels_csv
from hpa_zoo.zoo.onnx_convert import FEATURE_REL_TOL, onnx_to_keras_weights
from tests.torch_refs.bestfitting_densenet import (
    BioimageWrapper, PublishedOutputs, build_published_densenet, build_torch_bestfitting_densenet, randomize_)
from tests.torch_refs.resnets import torch_resnet
from zoo_models.teams.team1_bestfitting import FEATURE_LAYER, build_densenet121

SIZE = 128  # test input size (the package uses 1024); `large` -> a 2x2 final map
PROB_TOL = 1e-4


@pytest.fixture(scope="module")
def torch_model():
    """Team 1 reference, `large`, random weights and BN statistics; logit weights scaled so probabilities spread.

    Two 128-channel BNs get the same state: the exporter then stores those tensors once and reads them through
    ``Identity`` nodes, as it does for the identical tensors of an untrained model, so that path is tested too."""
    torch.manual_seed(0)
    model = randomize_(build_torch_bestfitting_densenet(num_classes=28, large=True), seed=1)
    with torch.no_grad():
        model.logit.weight.mul_(20.0)
    model.features.denseblock2.denselayer1.norm1.load_state_dict(
        model.features.denseblock1.denselayer3.norm1.state_dict())
    return BioimageWrapper(model).eval()


@pytest.fixture(scope="module")
def images(real_samples_dir) -> np.ndarray:
    """The 3 real samples, RGBY, resized to SIZE: float32 (3, 4, SIZE, SIZE) in [0, 1] (the package's input)."""
    ids = list(read_labels_csv(real_samples_dir / "labels.csv")["Id"])
    rgby = np.stack([load_rgby(real_samples_dir, i, size=SIZE) for i in ids])  # (3, SIZE, SIZE, 4) uint8
    return (rgby.astype(np.float32) / 255.0).transpose(0, 3, 1, 2)


def _export(wrapper, path, *, fold: bool, opset: int | None = None):
    torch.onnx.export(wrapper, torch.zeros(1, 4, SIZE, SIZE), str(path), input_names=["image"],
                      output_names=["classes", "features"], dynamo=False, do_constant_folding=fold,
                      opset_version=opset)
    return path


@pytest.fixture(scope="module")
def onnx_file(torch_model, tmp_path_factory):
    """The default export (constant folding on, so BN is folded into the preceding convs)."""
    return _export(torch_model, tmp_path_factory.mktemp("onnx") / "folded.onnx", fold=True)


@pytest.fixture(scope="module")
def keras_model():
    return build_densenet121(num_classes=28, input_shape=(SIZE, SIZE, 4), large=True)


def _run_onnx(path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = [sess.run(["classes", "features"], {"image": x[None]}) for x in images]  # the file has batch 1
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def _run_keras(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    both = keras.Model(model.input, [model.output, model.get_layer(FEATURE_LAYER).output])
    logits, feats = both(255.0 * images.transpose(0, 2, 3, 1), training=False)  # Keras: NHWC in [0, 255]
    logits, feats = keras.ops.convert_to_numpy(logits), keras.ops.convert_to_numpy(feats)
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64))), feats


def _assert_keras_matches_onnxruntime(path, keras_model, images, record_property, label: str):
    """Convert `path` into `keras_model`, then compare Keras and onnxruntime on `images` (the real samples)."""
    probs, feats = _run_onnx(path, images)
    assert probs.std() > 0.1 and np.abs(feats).max() > 0.1  # outputs informative enough for the test to fail
    check = onnx_to_keras_weights(path, keras_model)
    assert check.max_abs_diff_classes <= PROB_TOL and check.max_rel_diff_features <= FEATURE_REL_TOL
    k_probs, k_feats = _run_keras(keras_model, images)
    prob_diff = float(np.abs(k_probs - probs).max())
    feat_diff = float(np.abs(k_feats - feats).max())
    record_property("max_abs_diff_probabilities", prob_diff)
    record_property("max_abs_diff_features", feat_diff)
    print(f"{label}: max |p_keras - p_onnx| = {prob_diff:.3g}, max |f_keras - f_onnx| = {feat_diff:.3g} on the "
          f"real samples; probe check {check.summary()}")
    assert prob_diff <= PROB_TOL
    assert feat_diff <= 1e-4 * max(1.0, float(np.abs(feats).max()))
    return probs


@pytest.mark.parametrize("fold", [True, False], ids=["bn_folded", "bn_separate"])
def test_converted_keras_model_matches_onnxruntime_on_real_images(fold, torch_model, onnx_file, images, keras_model,
                                                                 tmp_path, record_property):
    path = onnx_file if fold else _export(torch_model, tmp_path / "m.onnx", fold=False)
    graph = onnx.load(str(path)).graph
    n_conv = sum(n.op_type == "Conv" for n in graph.node)
    n_bn = sum(n.op_type == "BatchNormalization" for n in graph.node)
    assert (n_bn < n_conv) if fold else (n_bn > n_conv)  # the export really took the path under test
    assert any(n.op_type == "Identity" for n in graph.node)  # shared (deduplicated) initialisers
    probs, feats = _run_onnx(path, images)
    with torch.no_grad():
        ref_probs, _ = torch_model(torch.from_numpy(images))
    assert np.abs(ref_probs.numpy() - probs).max() < 1e-5  # the export itself is faithful
    assert probs.std() > 0.1 and np.abs(feats).max() > 0.1  # outputs informative enough for the test to fail

    onnx_to_keras_weights(path, keras_model)
    k_probs, k_feats = _run_keras(keras_model, images)
    prob_diff = float(np.abs(k_probs - probs).max())
    feat_diff = float(np.abs(k_feats - feats).max())
    record_property("max_abs_diff_probabilities", prob_diff)
    record_property("max_abs_diff_features", feat_diff)
    print(f"fold={fold}: max |p_keras - p_onnx| = {prob_diff:.3g}, max |f_keras - f_onnx| = {feat_diff:.3g}")
    assert prob_diff <= PROB_TOL
    assert feat_diff <= 1e-4 * max(1.0, float(np.abs(feats).max()))


def _edited(onnx_file, out_path, edit) -> str:
    proto = onnx.load(str(onnx_file))
    edit(proto.graph)
    onnx.save(proto, str(out_path))
    return str(out_path)


def _replace_initialiser(graph, name: str, value: np.ndarray) -> None:
    (index,) = [i for i, t in enumerate(graph.initializer) if t.name == name]
    graph.initializer[index].CopyFrom(onnx.numpy_helper.from_array(value, name))


def test_wrong_num_classes_names_tensor_and_shapes_and_changes_nothing(onnx_file, keras_model, tmp_path):
    def five_classes(graph):  # the package's model with a 5-class `logit` layer
        for name in ("model.logit.weight", "model.logit.bias"):
            (t,) = [t for t in graph.initializer if t.name == name]
            _replace_initialiser(graph, name, onnx.numpy_helper.to_array(t)[:5])

    path = _edited(onnx_file, tmp_path / "five.onnx", five_classes)
    before = [w.numpy().copy() for w in keras_model.weights]
    with pytest.raises(WeightsError) as err:
        onnx_to_keras_weights(path, keras_model)  # the Keras model has 28 classes
    msg = str(err.value)
    assert "model.logit.weight" in msg and "(1024, 5)" in msg and "(1024, 28)" in msg and "logits" in msg
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, keras_model.weights))  # all or nothing


def test_normal_onnx_into_large_keras_model_fails_on_pooling(onnx_file, keras_model, tmp_path):
    def drop_extra_pool(graph):  # the non-`large` model: same weights, no second MaxPool after the stem
        pools = [n for n in graph.node if n.op_type == "MaxPool"]
        extra = pools[1]
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == extra.output[0]:
                    node.input[i] = extra.input[0]
        graph.node.remove(extra)

    with pytest.raises(WeightsError, match="pooling layers differ.*large"):
        onnx_to_keras_weights(_edited(onnx_file, tmp_path / "normal.onnx", drop_extra_pool), keras_model)


def test_initialiser_no_node_reads_is_not_an_error(onnx_file, keras_model, tmp_path):
    """What the graph computes is the check: a stored tensor that nothing reads changes nothing."""
    def add_stray(graph):
        graph.initializer.append(onnx.numpy_helper.from_array(np.ones((3, 7), np.float32), "stray.weight"))

    check = onnx_to_keras_weights(_edited(onnx_file, tmp_path / "extra.onnx", add_stray), keras_model)
    assert check.max_abs_diff_classes <= PROB_TOL


def test_extra_weights_in_the_computation_are_refused_by_the_numbers(onnx_file, keras_model, tmp_path):
    """An extra learned tensor the Keras model has no place for (here: a bias added to the features) changes the
    outputs; the refusal names the output, the difference and the unmapped tensor."""
    def add_feature_bias(graph):
        for node in graph.node:  # the features' producer and readers (the logit Gemm) now use `features_raw`
            for names in (node.output, node.input):
                for i, name in enumerate(names):
                    if name == "features":
                        names[i] = "features_raw"
        bias = np.random.default_rng(0).normal(0.0, 1.0, (1, 1024)).astype(np.float32)
        graph.initializer.append(onnx.numpy_helper.from_array(bias, "stray.weight"))
        graph.node.append(onnx.helper.make_node("Add", ["features_raw", "stray.weight"], ["features"]))

    before = [w.numpy().copy() for w in keras_model.weights]
    with pytest.raises(WeightsError) as err:
        onnx_to_keras_weights(_edited(onnx_file, tmp_path / "extra.onnx", add_feature_bias), keras_model)
    msg = str(err.value)
    assert "output 'features'" in msg and "relative" in msg and "stray.weight (1, 1024)" in msg
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, keras_model.weights))  # all or nothing


def test_different_input_normalisation_is_an_error(onnx_file, keras_model, tmp_path):
    def double_std(graph):
        (t,) = [t for t in graph.initializer if t.name == "model.std"]
        _replace_initialiser(graph, "model.std", onnx.numpy_helper.to_array(t) * 2)

    with pytest.raises(WeightsError, match="normalises its input differently"):
        onnx_to_keras_weights(_edited(onnx_file, tmp_path / "std.onnx", double_std), keras_model)


# ---------------------------------------------------------------------------------------------- published form
@pytest.fixture(scope="module")
def published_models():
    """The published form (`PublishedDensenet`), random weights and BN statistics, in both layouts: ``large``
    (the bioimage.io 1024 package) and non-large (the v0.1.0 release file). Logit weights are scaled so the
    probabilities spread."""
    out = {}
    for layout, large in (("package_large", True), ("release_normal", False)):
        torch.manual_seed(0)
        model = randomize_(build_published_densenet(num_classes=28, large=large), seed=2)
        with torch.no_grad():
            model.logit.weight.mul_(20.0)
        out[layout] = model.eval()
    return out


@pytest.fixture(scope="module")
def keras_normal_model():
    return build_densenet121(num_classes=28, input_shape=(SIZE, SIZE, 4), large=False)


def _export_published(model, path, *, fold: bool, opset: int, ending: str = "reciprocal"):
    return _export(PublishedOutputs(model, ending).eval(), path, fold=fold, opset=opset)


def test_published_form_really_is_what_the_exporter_sees(published_models, images, tmp_path):
    """The reference reproduces what matters to the exporter: an in-place ScatterND normalisation with scalar
    constants before the first Conv, the Neg -> Exp -> Add(1) -> Reciprocal ending, the adaptive max pool as a
    size-specific MaxPool, torchvision names; and it equals the tidy form's computation."""
    model = published_models["package_large"]
    path = _export_published(model, tmp_path / "p.onnx", fold=True, opset=17)
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    first_conv = ops.index("Conv")
    assert ops[:first_conv].count("ScatterND") == 4 and "Sub" in ops[:first_conv] and "Div" in ops[:first_conv]
    last_gemm = len(ops) - 1 - ops[::-1].index("Gemm")
    assert [op for op in ops[last_gemm + 1:] if op != "Constant"] == ["Neg", "Exp", "Add", "Reciprocal"]
    head_pool = [n for n in graph.node if n.op_type == "MaxPool"][-1]
    assert [a.ints for a in head_pool.attribute if a.name == "kernel_shape"][0] == [SIZE // 64] * 2
    names = {t.name for t in graph.initializer}
    assert any(n.startswith("model.backbone.features.") for n in names)
    x = torch.from_numpy(images[:1].copy())
    with torch.no_grad():
        given = x.clone()
        p_pub, f_pub = PublishedOutputs(model).eval()(given)
        assert not torch.equal(given, x)  # forward really normalised its input in place
        tidy = build_torch_bestfitting_densenet(num_classes=28, large=True).eval()
        state = {k.replace("backbone.features.", "features."): v for k, v in model.state_dict().items()
                 if not k.startswith(("conv1.", "encoder", "backbone.classifier"))}
        missing, unexpected = tidy.load_state_dict(state, strict=False)
        assert sorted(missing) == ["mean", "std"] and not unexpected  # the tidy form's buffers: the same RGBY stats
        p_tidy, f_tidy = BioimageWrapper(tidy).eval()(x.clone())
    np.testing.assert_allclose(p_pub.numpy(), p_tidy.numpy(), atol=1e-6)
    np.testing.assert_allclose(f_pub.numpy(), f_tidy.numpy(), atol=1e-5)


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("layout", ["package_large", "release_normal"])
def test_published_form_exports_load_and_match_onnxruntime_on_real_images(
        layout, fold, opset, published_models, keras_model, keras_normal_model, images, tmp_path, record_property):
    model = published_models[layout]
    path = _export_published(model, tmp_path / f"{layout}_{opset}_{fold}.onnx", fold=fold, opset=opset)
    graph = onnx.load(str(path)).graph
    assert "ScatterND" in [n.op_type for n in graph.node] and "Reciprocal" in [n.op_type for n in graph.node]
    probs = _assert_keras_matches_onnxruntime(path, keras_model if layout == "package_large" else keras_normal_model,
                                              images, record_property, f"published {layout} opset {opset} "
                                              f"fold={fold}")
    with torch.no_grad():
        ref, _ = PublishedOutputs(model).eval()(torch.from_numpy(images.copy()))
    assert np.abs(ref.numpy() - probs).max() < 1e-5  # the export itself is faithful


def test_opset_9_cannot_export_the_published_inplace_loop(published_models, tmp_path):
    """A fact about the published files, checked: the TorchScript exporter has no opset-9 form of the in-place
    per-channel assignment, so those files are opset >= 11 (the tidy form does export at opset 9, below)."""
    with pytest.raises(Exception, match="index_put.*opset 9"):
        _export_published(published_models["package_large"], tmp_path / "p9.onnx", fold=True, opset=9)


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
def test_tidy_sigmoid_form_at_opset_9_loads_and_matches(fold, torch_model, keras_model, images, tmp_path,
                                                        record_property):
    path = _export(torch_model, tmp_path / "tidy9.onnx", fold=fold, opset=9)
    assert "Sigmoid" in [n.op_type for n in onnx.load(str(path)).graph.node]
    _assert_keras_matches_onnxruntime(path, keras_model, images, record_property, f"tidy opset 9 fold={fold}")


# ---------------------------------------------------------------------------------------------- refusals
def test_densenet169_is_refused_as_another_architecture(keras_model, tmp_path):
    torch.manual_seed(0)
    d169 = randomize_(build_published_densenet(large=True, block_config=(6, 12, 32, 32)), seed=3).eval()
    path = _export_published(d169, tmp_path / "d169.onnx", fold=True, opset=17)
    with pytest.raises(WeightsError, match=r"168 convolutions .* has 120 .*looks like DenseNet169"):
        onnx_to_keras_weights(path, keras_model)


def test_resnet_is_refused_as_another_architecture(keras_model, tmp_path):
    class Outputs(torch.nn.Module):  # a 4-channel ResNet34 with the package's input/output contract
        def __init__(self):
            super().__init__()
            self.net = torch_resnet(34, in_channels=4, num_classes=28)

        def forward(self, image):
            feats = torch.flatten(self.net.avgpool(self.net.features(image)), 1)
            return torch.sigmoid(self.net.fc(feats)), feats

    path = _export(Outputs().eval(), tmp_path / "resnet.onnx", fold=True, opset=17)
    with pytest.raises(WeightsError, match=r"36 convolutions and 16 residual additions.*ResNet-style"):
        onnx_to_keras_weights(path, keras_model)


def test_other_normalisation_constants_are_refused_naming_them(keras_model, tmp_path):
    torch.manual_seed(0)
    imagenet_like = randomize_(build_published_densenet(large=True, mean=(0.485, 0.456, 0.406, 0.485),
                                                        std=(0.229, 0.224, 0.225, 0.229)), seed=2).eval()
    path = _export_published(imagenet_like, tmp_path / "norm.onnx", fold=True, opset=17)
    before = [w.numpy().copy() for w in keras_model.weights]
    with pytest.raises(WeightsError) as err:
        onnx_to_keras_weights(path, keras_model)
    msg = str(err.value)
    assert "normalises its input differently" in msg and "0.485" in msg and "0.229" in msg and "0.074598" in msg
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, keras_model.weights))


def test_model_without_the_sigmoid_is_refused(published_models, keras_model, tmp_path):
    path = _export_published(published_models["package_large"], tmp_path / "logits.onnx", fold=True, opset=17,
                             ending="logits")
    with pytest.raises(WeightsError, match=r"output 'classes'.*missing sigmoid"):
        onnx_to_keras_weights(path, keras_model)


def test_truncated_file_is_refused(onnx_file, keras_model, tmp_path):
    data = onnx_file.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"cut\.onnx \(\d+ bytes\).*truncated"):
        onnx_to_keras_weights(cut, keras_model)


def test_export_with_symbolic_spatial_axes_is_checked_at_the_default_probe_size(torch_model, keras_model, images,
                                                                                  tmp_path, record_property):
    from hpa_zoo.zoo.onnx_convert import DEFAULT_PROBE_SIZE

    path = tmp_path / "dynamic.onnx"
    torch.onnx.export(torch_model, torch.zeros(1, 4, SIZE, SIZE), str(path), input_names=["image"],
                      output_names=["classes", "features"], dynamo=False, opset_version=17,
                      dynamic_axes={"image": {2: "height", 3: "width"}})
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[2:]] == ["height", "width"]
    check = onnx_to_keras_weights(path, keras_model)
    assert check.probe_shape[1:3] == (DEFAULT_PROBE_SIZE, DEFAULT_PROBE_SIZE)
    _assert_keras_matches_onnxruntime(path, keras_model, images, record_property, "tidy, symbolic H/W")


def test_export_with_initialisers_as_graph_inputs_loads(published_models, keras_model, images, tmp_path,
                                                        record_property):
    """Exporters of the packages' era listed every initialiser as a graph input too (keep_initializers_as_inputs,
    the old default): the image is then the only input without a stored value."""
    path = tmp_path / "old_style.onnx"
    torch.onnx.export(PublishedOutputs(published_models["package_large"]).eval(), torch.zeros(1, 4, SIZE, SIZE),
                      str(path), input_names=["image"], output_names=["classes", "features"], dynamo=False,
                      opset_version=11, keep_initializers_as_inputs=True)
    graph = onnx.load(str(path)).graph
    assert len(graph.input) > 100  # the initialisers are inputs as well
    _assert_keras_matches_onnxruntime(path, keras_model, images, record_property, "initialisers as inputs")
