"""`hpa_zoo.zoo.verify_weights.verify` / `hpa-zoo weights verify`: the one-command proof of Team 1's published conversion.

The package's real files cannot be downloaded here, so the test builds their stand-ins the way the package was
made: the published-form PyTorch reference (`tests/torch_refs/bestfitting_densenet.py`: in-place normalisation
loop, ``1 / (1 + exp(-x))``) exported with the TorchScript exporter, and the three bioimage.io test tensors written
from onnxruntime's run of that export on a real HPA sample (``test_input.npy`` already /255, NCHW). They are served
from a loopback HTTP server, with the ONNX file sha256-pinned and the tensors without a hash, like the registry row.
"""
from __future__ import annotations

import hashlib

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hpa_zoo import cli
from hpa_zoo.zoo import verify_weights, weights
from hpa_zoo.errors import WeightsError
from hpa_zoo.data.images import load_rgby
from hpa_zoo.data.labels import read_labels_csv
from hpa_zoo.registry import WeightsSpec
from tests.torch_refs.bestfitting_densenet import PublishedOutputs, build_published_densenet, randomize_

MODEL = "team1_densenet121_1024"
SIZE = 128  # the package is 1024; the check does not depend on the size


def _export(tmp_path_factory, ending: str):
    torch.manual_seed(0)
    net = randomize_(build_published_densenet(num_classes=28, large=True), seed=4)
    with torch.no_grad():
        net.logit.weight.mul_(20.0)
    path = tmp_path_factory.mktemp(f"pkg_{ending}") / "densenet_model.onnx"
    torch.onnx.export(PublishedOutputs(net, ending).eval(), torch.zeros(1, 4, SIZE, SIZE), str(path),
                      input_names=["image"], output_names=["classes", "features"], dynamo=False, opset_version=17)
    return path


@pytest.fixture(scope="module")
def package(tmp_path_factory, real_samples_dir):
    """A folder laid out like the bioimage.io package: densenet_model.onnx + the three test tensors."""
    onnx_file = _export(tmp_path_factory, "reciprocal")
    sample = read_labels_csv(real_samples_dir / "labels.csv")["Id"].iloc[0]
    x = (load_rgby(real_samples_dir, sample, size=SIZE).astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
    classes, features = ort.InferenceSession(str(onnx_file)).run(["classes", "features"], {"image": x})
    np.save(onnx_file.parent / "test_input.npy", x)
    np.save(onnx_file.parent / "test_output_classes.npy", classes)
    np.save(onnx_file.parent / "test_output_features.npy", features)
    assert classes.std() > 0.05  # informative enough for a mismatch to show
    return onnx_file.parent


def _spec(server, folder, onnx_name="densenet_model.onnx") -> WeightsSpec:
    for name in ("densenet_model.onnx", "test_input.npy", "test_output_classes.npy", "test_output_features.npy"):
        server.routes[f"/{name}"] = ("ok", (folder / name).read_bytes())
    body = (folder / onnx_name).read_bytes()
    server.routes["/densenet_model.onnx"] = ("ok", body)
    tensors = tuple(WeightsSpec(name=role, urls=(server.url(f"/{file}"),), sha256="", format="npy",
                                filename=f"pkg.{file}") for role, file in verify_weights.TEST_TENSOR_FILES.items())
    return WeightsSpec(name="hpa", urls=(server.url("/densenet_model.onnx"),),
                       sha256=hashlib.sha256(body).hexdigest(), format="onnx", filename="pkg_densenet_model.onnx",
                       test_tensors=tensors)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HPA_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HPA_ZOO_OFFLINE", raising=False)
    return tmp_path / "cache" / "weights"


def test_verify_downloads_converts_and_reproduces_the_test_tensors(package, server, cache, monkeypatch):
    report = verify_weights.verify(MODEL, spec=_spec(server, package), progress=False)
    assert report.passed
    assert report.input_shape == (1, 4, SIZE, SIZE)
    assert report.onnx_vs_tensors["classes"] <= 1e-6  # the ONNX file reproduces its own tensors
    assert report.classes_max_abs <= 1e-4 and report.features_max_rel <= 1e-4
    assert report.conversion["passed"] and report.conversion["max_abs_diff_classes"] <= 1e-4
    cached = sorted(p.name for p in cache.iterdir())
    assert "pkg_densenet_model.onnx" in cached and "pkg.test_input.npy" in cached
    assert f"pkg_densenet_model.{MODEL}.weights.h5" in cached and f"pkg_densenet_model.{MODEL}.check.json" in cached

    server.close()  # offline from now on: everything comes from the cache, the conversion included
    monkeypatch.setenv("HPA_ZOO_OFFLINE", "1")
    again = verify_weights.verify(MODEL, spec=_offline_spec(report), progress=False)
    assert again.passed and again.conversion == {}  # read from the cache: no second conversion
    assert again.classes_max_abs == pytest.approx(report.classes_max_abs, abs=1e-7)


def _offline_spec(report) -> WeightsSpec:
    """The same spec as the online run (names and hashes matter offline, URLs do not)."""
    tensors = tuple(WeightsSpec(name=role, urls=(), sha256="", format="npy", filename=f"pkg.{file}")
                    for role, file in verify_weights.TEST_TENSOR_FILES.items())
    return WeightsSpec(name="hpa", urls=(), sha256=weights.sha256_file(report.onnx_path), format="onnx",
                       filename="pkg_densenet_model.onnx", test_tensors=tensors)


def test_test_tensors_the_onnx_file_does_not_reproduce_are_refused_and_removed(package, server, cache, tmp_path):
    spec = _spec(server, package)
    wrong = np.load(package / "test_output_classes.npy")
    wrong[0, 3] += 0.2
    path = tmp_path / "wrong.npy"
    np.save(path, wrong)
    server.routes["/test_output_classes.npy"] = ("ok", path.read_bytes())
    with pytest.raises(WeightsError, match=r"do not match the ONNX file's own outputs.*'classes': 0\.2"):
        verify_weights.verify(MODEL, spec=spec, progress=False)
    assert not (cache / "pkg.test_output_classes.npy").exists()  # nothing unauthenticated stays in the cache


def test_a_file_the_numeric_check_refuses_is_never_cached(server, cache, tmp_path_factory):
    folder = _export(tmp_path_factory, "logits").parent  # no sigmoid: its "classes" are logits
    onnx_file = folder / "densenet_model.onnx"
    x = np.random.default_rng(0).uniform(0, 1, (1, 4, SIZE, SIZE)).astype(np.float32)
    classes, features = ort.InferenceSession(str(onnx_file)).run(["classes", "features"], {"image": x})
    for name, array in (("test_input.npy", x), ("test_output_classes.npy", classes),
                        ("test_output_features.npy", features)):
        np.save(folder / name, array)
    with pytest.raises(WeightsError, match="missing sigmoid"):
        verify_weights.verify(MODEL, spec=_spec(server, folder), progress=False)
    assert not list(cache.glob("*.weights.h5")) and not list(cache.glob("*.check.json"))


def test_cli_verify_offline_on_local_files(package, monkeypatch, capsys):
    monkeypatch.setenv("HPA_ZOO_OFFLINE", "1")
    rc = cli.main(["weights", "verify", MODEL, "--onnx", str(package / "densenet_model.onnx"),
                   "--tensors", str(package)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "max |p_keras - p_test|" in out and "max |f_keras - f_test|" in out and "PASSED" in out
    measured = float(out.split("max |p_keras - p_test| = ")[1].split()[0])
    assert measured <= 1e-4
