"""hpa_zoo.onnx_convert against an independent PyTorch reference exported like the bioimage.io package.

The reference (`tests/torch_refs/bestfitting_densenet.py`, plain PyTorch) gets random weights and BN statistics,
is exported with the TorchScript exporter in eval mode (input ``image`` 1x4xHxW = uint8/255, outputs ``classes`` =
sigmoid probabilities and ``features``; teams.md §1.8), converted into the Keras Team 1 model, and the Keras
outputs on the real HPA samples are compared with onnxruntime's.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
keras = pytest.importorskip("keras")

from hpa_zoo.errors import WeightsError  # noqa: E402
from hpa_zoo.images import load_rgby  # noqa: E402
from hpa_zoo.labels import read_labels_csv  # noqa: E402
from hpa_zoo.onnx_convert import onnx_to_keras_weights  # noqa: E402
from tests.torch_refs.bestfitting_densenet import (  # noqa: E402
    BioimageWrapper, build_torch_bestfitting_densenet, randomize_)
from zoo_models.team1_bestfitting import FEATURE_LAYER, build_densenet121  # noqa: E402

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


def _export(wrapper, path, *, fold: bool):
    torch.onnx.export(wrapper, torch.zeros(1, 4, SIZE, SIZE), str(path), input_names=["image"],
                      output_names=["classes", "features"], dynamo=False, do_constant_folding=fold)
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


def test_unused_initialiser_is_an_error(onnx_file, keras_model, tmp_path):
    def add_stray(graph):
        graph.initializer.append(onnx.numpy_helper.from_array(np.ones((3, 7), np.float32), "stray.weight"))

    with pytest.raises(WeightsError, match=r"stray\.weight \(3, 7\)"):
        onnx_to_keras_weights(_edited(onnx_file, tmp_path / "extra.onnx", add_stray), keras_model)


def test_different_input_normalisation_is_an_error(onnx_file, keras_model, tmp_path):
    def double_std(graph):
        (t,) = [t for t in graph.initializer if t.name == "model.std"]
        _replace_initialiser(graph, "model.std", onnx.numpy_helper.to_array(t) * 2)

    with pytest.raises(WeightsError, match="normalises its input differently"):
        onnx_to_keras_weights(_edited(onnx_file, tmp_path / "std.onnx", double_std), keras_model)
