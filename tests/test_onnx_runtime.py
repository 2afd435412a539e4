"""hpa_zoo.infer.onnx_runtime: onnxruntime on the project's own ONNX export gives the Keras logits (<= 1e-5), is cached
by the weights' sha256, and `predict_images(runtime="onnx")` writes the same probabilities as Keras."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hpa_zoo
from hpa_zoo.infer import onnx_runtime
from hpa_zoo.errors import ConfigError
from tests.conftest import TINY_REGISTRY_NAME


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HPA_ZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_export_runs_with_the_keras_logits_and_is_cached_by_weights(tiny_rgby_model, tmp_path, cache):
    weights = tmp_path / "a.weights.h5"
    tiny_rgby_model.save_weights(weights)
    first = onnx_runtime.for_model(tiny_rgby_model, weights_file=weights)
    x = np.random.default_rng(1).uniform(0, 255, (3,) + tuple(tiny_rgby_model.input_shape[1:])).astype(np.float32)
    np.testing.assert_allclose(first.predict_on_batch(x), np.asarray(tiny_rgby_model(x, training=False)), atol=1e-5)
    stamp = first.path.stat().st_mtime_ns
    again = onnx_runtime.for_model(tiny_rgby_model, weights_file=weights)
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp  # not exported twice
    other = tmp_path / "b.weights.h5"
    tiny_rgby_model.save_weights(other)
    with open(other, "ab") as f:  # another file (another sha256): another export folder
        f.write(b"\0")
    assert onnx_runtime.for_model(tiny_rgby_model, weights_file=other).path.parent != first.path.parent


def test_choose_runtime():
    assert onnx_runtime.choose_runtime("keras") == "keras"
    assert onnx_runtime.choose_runtime("auto") == "onnx"  # this CPU machine has onnxruntime and tf2onnx
    with pytest.raises(ConfigError, match="runtime='gpu'"):
        onnx_runtime.choose_runtime("gpu")


def test_predict_images_onnx_equals_keras(tiny_registry_model, tmp_path, real_samples_dir):
    from hpa_zoo.infer.predict_images import predict_images

    model = hpa_zoo.load(tiny_registry_model)
    preset = hpa_zoo.save_preset(model, tmp_path / "preset", model_name=TINY_REGISTRY_NAME)
    out = {rt: predict_images(preset, real_samples_dir, out_dir=tmp_path / rt, runtime=rt, verbose=0)
           for rt in ("keras", "onnx")}
    a, b = (pd.read_csv(out[rt]["probabilities"]) for rt in ("keras", "onnx"))
    assert list(a["Id"]) == list(b["Id"]) and len(a) == 3
    np.testing.assert_allclose(a.iloc[:, 1:].to_numpy(), b.iloc[:, 1:].to_numpy(), atol=1e-5)
