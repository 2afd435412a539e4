"""hpa_zoo.infer.export: the exported artifacts compute what the Keras model computes, and the bioimage.io package passes
bioimage.io's own validator.

References: the Keras model's own outputs (SavedModel reloaded with ``tf.saved_model.load``, ONNX run by
onnxruntime, the package's ``model.keras`` reloaded by plain ``keras.saving.load_model``), a NumPy sigmoid, and
``bioimageio.spec.load_description`` (and ``bioimageio.core.test_description`` where it is installed).

The exporters are model-agnostic, so the model is ``tests/conftest.py::tiny_rgby_model``: the zoo contract
(RGBY [0, 255] in, float32 logits out) with Team 1's layer kinds (``input_norm``, conv/BN/ReLU, max/average pools,
concat, GAP+GMP head, dropout) at a fraction of DenseNet121's tracing and conversion time.
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

import keras

from hpa_zoo.infer import export  # noqa: E402
from hpa_zoo.constants import CLASS_NAMES  # noqa: E402
from hpa_zoo.errors import ConfigError  # noqa: E402
from hpa_zoo.data.images import load_rgby  # noqa: E402

from tests.conftest import MODEL_FIXTURE_SIZE as SIZE  # noqa: E402


@pytest.fixture(scope="module")
def model(tiny_rgby_model):
    return tiny_rgby_model


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 4)).astype(np.float32)


def test_saved_model_serve_equals_keras(model, batch, tmp_path):
    import tensorflow as tf

    path = export.export_saved_model(model, tmp_path / "sm")
    loaded = tf.saved_model.load(str(path))  # keep a reference: its variables die with it
    served = loaded.serve(tf.constant(batch)).numpy()
    expected = np.asarray(model(batch, training=False))
    assert served.shape == (2, 28)
    assert np.abs(served - expected).max() <= 1e-5


def test_onnx_equals_keras_and_is_self_contained(model, batch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    path = export.export_onnx(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # one input (the image), no leaked constants; one output, the logits
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    got = session.run(None, {"image": batch})[0]
    expected = np.asarray(model(batch, training=False))
    assert np.abs(got - expected).max() <= 1e-5


def test_onnx_path_must_end_in_onnx(model, tmp_path):
    with pytest.raises(ConfigError, match=r"\.onnx"):
        export.export_onnx(model, tmp_path / "m.bin")


def test_bioimageio_package_from_real_image_validates(model, real_samples_dir, tmp_path, monkeypatch):
    spec = pytest.importorskip("bioimageio.spec")
    image = load_rgby(real_samples_dir, "b478cc78-bad4-11e8-b2b8-ac1f6b6435d0", size=SIZE)
    rdf = export.export_bioimageio(model, tmp_path / "pkg", name="HPA tiny RGBY model (test)",
                                   test_image=image, authors=[{"name": "Test Author"}], verbose=False)
    pkg = rdf.parent

    descr = spec.load_description(rdf, perform_io_checks=True)
    assert descr.validation_summary.status == "valid-format", descr.validation_summary.display()
    assert not [e for d in descr.validation_summary.details for e in d.errors]
    assert str(descr.format_version).startswith("0.5")

    # axes in the Keras layout with the RGBY channel names; 28 class names on the output
    (inp,), (out,) = descr.inputs, descr.outputs
    assert [a.type for a in inp.axes] == ["batch", "space", "space", "channel"]
    assert [str(a.id) for a in inp.axes[1:3]] == ["y", "x"]
    assert [str(c) for c in inp.axes[3].channel_names] == ["red", "green", "blue", "yellow"]
    assert str(out.id) == "probabilities" and [str(c) for c in out.axes[1].channel_names] == list(CLASS_NAMES)
    assert descr.weights.keras_v3 is not None and descr.weights.keras_v3.backend[0] == "tensorflow"
    assert any(str(c.doi) == "10.1038/s41592-019-0658-6" for c in descr.cite)
    assert "# Validation" in (pkg / "README.md").read_text()
    assert (pkg / "hpa_labels.txt").read_text().splitlines() == list(CLASS_NAMES)
    cover = cv2.imread(str(pkg / "cover.png"))
    assert cover is not None and cover.shape[1] == 2 * cover.shape[0]

    # the test tensors: exactly the real image, and the sigmoid of the model's logits on it
    x = np.load(pkg / "test_input.npy")
    y = np.load(pkg / "test_output.npy")
    np.testing.assert_array_equal(x, image[None].astype(np.float32))
    logits = np.asarray(model(x, training=False), np.float64)
    np.testing.assert_allclose(y, 1.0 / (1.0 + np.exp(-logits)), atol=1e-6)
    # the packaged .keras loads with plain Keras (no hpa-zoo custom objects) and reproduces the test output
    reloaded = keras.saving.load_model(pkg / "model.keras", compile=False)
    np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), y, atol=1e-6)

    # bioimage.io's own runner (what `bioimageio test rdf.yaml` runs): loads model.keras with keras_v3 and
    # reproduces test_output.npy from test_input.npy. Its Keras adapter writes os.environ["KERAS_BACKEND"] at import
    # (default "torch"): pin it for this test only, or every later test's child process would run on torch.
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    import bioimageio.core as core

    summary = core.test_description(rdf)
    assert summary.status == "passed", summary.display()
    passed = {d.name for d in summary.details if d.status == "passed"}
    assert "Reproduce test outputs from test inputs (keras_v3)" in passed
    assert {f"Run keras_v3 inference for inputs with batch_size: {b} and size parameter n: 0" for b in (1, 2)} <= passed
    # and the command line a bioimage.io user runs (a relative path: an absolute one is looked up as an id)
    import subprocess
    import sys
    from pathlib import Path

    cli = Path(sys.executable).parent / "bioimageio"
    run = subprocess.run([str(cli), "test", "rdf.yaml"], cwd=pkg, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_bioimageio_refuses_wrong_class_names_and_foreign_folder(model, tmp_path):
    pytest.importorskip("bioimageio.spec")
    with pytest.raises(ConfigError, match="class_names"):
        export.export_bioimageio(model, tmp_path / "a", name="x", class_names=["a", "b"], verbose=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text(json.dumps({"keep": True}))
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        export.export_bioimageio(model, foreign, name="x", verbose=False)
    assert (foreign / "notes.txt").exists()
