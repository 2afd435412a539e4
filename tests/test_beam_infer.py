"""`hpa_zoo.infer.beam` (``predict --beam`` / ``embed --beam``) against the single-process path, id for id.

Runner: ``FnApiRunner`` (in-process, offline, one worker), on a handful of 64-px synthetic images
(`hpa_zoo.data.synthetic`) and tiny presets of the shared test model. References: `hpa_zoo.infer.predict_images.predict_images`
(probabilities, labels, features), NumPy thresholds, pyarrow for the Parquet shards, fsspec's ``memory://`` file
system and Beam's ``file://`` local file system for the inputs.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("apache_beam")

from hpa_zoo.infer import beam as beam_infer  # noqa: E402
from hpa_zoo.constants import CHANNELS, CLASS_NAMES  # noqa: E402
from hpa_zoo.errors import HpaDataError  # noqa: E402
from hpa_zoo.infer.predict_images import predict_images  # noqa: E402

RUNNER = ["--runner=FnApiRunner"]
N_TEST = 6


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HPA_ZOO_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from hpa_zoo.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "kaggle", n_train=1, n_test=N_TEST, size=64,
                                   seed=5, workers=1, progress=False)


@pytest.fixture
def presets(tmp_path, tiny_registry_model, tiny_rgby_model):
    """Two presets of the tiny RGBY model: the shared one and one with its logits layer changed (an ensemble)."""
    import hpa_zoo

    first = hpa_zoo.save_preset(tiny_rgby_model, tmp_path / "p0", model_name=tiny_registry_model,
                                metadata={"thresholds": [0.45] * 28})
    clone = __import__("keras").models.clone_model(tiny_rgby_model)
    clone.set_weights(tiny_rgby_model.get_weights())
    w, b = clone.get_layer("logits").get_weights()
    clone.get_layer("logits").set_weights([w[::-1].copy(), b + 0.3])
    second = hpa_zoo.save_preset(clone, tmp_path / "p1", model_name=tiny_registry_model,
                                 metadata={"thresholds": [0.55] * 28})
    return [str(first), str(second)]


def _by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("Id").sort_index()


def test_predict_beam_equals_single_process_with_tta_ensemble_and_parquet(data, presets, tmp_path):
    single = predict_images(presets, data / "test", out_dir=tmp_path / "single", tta="d4", verbose=0)
    got = beam_infer.run_beam(presets, data, out_dir=tmp_path / "beam", tta="d4", beam_options=RUNNER,
                              parquet=True, max_batch_size=4)
    want = _by_id(pd.read_csv(single["probabilities"], dtype={"Id": str}))
    probs = _by_id(beam_infer.read_shards(tmp_path / "beam", "probabilities"))
    assert list(probs.columns) == list(CLASS_NAMES) and list(probs.index) == list(want.index)  # sample_submission ids
    np.testing.assert_allclose(probs.to_numpy(), want.to_numpy(), rtol=0, atol=1e-6 + 1e-12)
    labels = _by_id(beam_infer.read_shards(tmp_path / "beam", "predictions"))
    want_labels = _by_id(pd.read_csv(single["predictions"], dtype=str, keep_default_na=False))
    assert labels["Labels"].to_dict() == want_labels["Labels"].to_dict()
    # the labels are the mean threshold (0.5) applied to the averaged probabilities, checked in NumPy
    first = probs.iloc[0].to_numpy()
    assert labels["Labels"].iloc[0] == ";".join(np.asarray(CLASS_NAMES)[first > 0.5])
    parquet = pd.concat([pd.read_parquet(f) for f in sorted((tmp_path / "beam").glob("probabilities-*.parquet"))])
    np.testing.assert_allclose(_by_id(parquet).to_numpy(), want.to_numpy(), rtol=0, atol=1e-6)
    assert got["counters"] == {"images_read": N_TEST, "images_skipped": 0, "images_predicted": N_TEST}
    assert got["peak_rss_mb"]["max"] > 100  # a TensorFlow process
    sidecar = json.loads((tmp_path / "beam" / "probabilities.csv.json").read_text())
    assert sidecar["n_rows"] == N_TEST and sidecar["tta"]["transforms"] == "d4"
    assert sidecar["class_names"] == list(CLASS_NAMES) and sidecar["shards"].endswith("probabilities-SSSSS-of-NNNNN.csv")


def test_embed_beam_equals_single_process_features(data, presets, tmp_path):
    single = predict_images(presets[0], data / "test", out_dir=tmp_path / "single", features=True, verbose=0)
    got = beam_infer.run_beam(presets[0], data / "test", out_dir=tmp_path / "beam", mode="embed",
                              beam_options=RUNNER)
    ids = pd.read_csv(single["features_ids"], dtype=str)["Id"].tolist()
    want = pd.DataFrame(np.load(single["features"]), index=ids).sort_index()
    feats = _by_id(beam_infer.read_shards(tmp_path / "beam", "features"))
    assert list(feats.index) == list(want.index) and feats.shape == (N_TEST, 32)
    np.testing.assert_allclose(feats.to_numpy(), want.to_numpy(), rtol=0, atol=1e-5)
    assert got["counters"]["images_predicted"] == N_TEST


def _to_memory(data, prefix: str, cut: str | None = None) -> list[str]:
    """Copy the test images into fsspec's in-memory file system; ``cut`` truncates that file."""
    import fsspec

    fs = fsspec.filesystem("memory")
    ids = pd.read_csv(data / "sample_submission.csv")["Id"].tolist()
    for image_id in ids:
        for c in CHANNELS:
            name = f"{image_id}_{c}.png"
            raw = (data / "test" / name).read_bytes()
            with fs.open(f"{prefix}/test/{name}", "wb") as f:
                f.write(raw[:40] if name == cut else raw)
    with fs.open(f"{prefix}/sample_submission.csv", "wb") as f:
        f.write((data / "sample_submission.csv").read_bytes())
    return ids


def test_cloud_style_inputs_memory_fs_skip_bad_and_counters(data, presets, tmp_path):
    pytest.importorskip("fsspec")
    ids = _to_memory(data, "memory://hpa_beam_test", cut=None)
    cut = f"{ids[2]}_green.png"
    _to_memory(data, "memory://hpa_beam_bad", cut=cut)
    single = _by_id(pd.read_csv(predict_images(presets[0], data / "test", out_dir=tmp_path / "s", verbose=0)
                                ["probabilities"], dtype={"Id": str}))
    beam_infer.run_beam(presets[0], "memory://hpa_beam_test", out_dir=tmp_path / "mem", beam_options=RUNNER)
    np.testing.assert_allclose(_by_id(beam_infer.read_shards(tmp_path / "mem")).to_numpy(), single.to_numpy(),
                               rtol=0, atol=1e-6 + 1e-12)
    with pytest.raises(HpaDataError, match=rf"memory://hpa_beam_bad/test/{cut}: cannot be decoded"):
        beam_infer.run_beam(presets[0], "memory://hpa_beam_bad", out_dir=tmp_path / "raise", beam_options=RUNNER)
    got = beam_infer.run_beam(presets[0], "memory://hpa_beam_bad", out_dir=tmp_path / "skip", beam_options=RUNNER,
                              skip_bad=True)
    assert got["counters"] == {"images_read": N_TEST - 1, "images_skipped": 1, "images_predicted": N_TEST - 1}
    skipped = beam_infer.read_shards(tmp_path / "skip", "skipped")
    assert skipped["Id"].tolist() == [ids[2]] and "re-download" in skipped["reason"][0]
    kept = _by_id(beam_infer.read_shards(tmp_path / "skip"))
    np.testing.assert_allclose(kept.to_numpy(), single.drop(index=ids[2]).to_numpy(), rtol=0, atol=1e-6 + 1e-12)


def test_beam_local_file_urls_and_incomplete_sets(data, presets, tmp_path):
    """``file://`` URLs are local paths (Beam's LocalFileSystem writes the shards); a missing channel is listed
    (skip) or refused."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    ids = pd.read_csv(data / "sample_submission.csv")["Id"].tolist()[:3]
    for image_id in ids:
        for c in CHANNELS:
            if not (image_id == ids[1] and c == "yellow"):
                (folder / f"{image_id}_{c}.png").write_bytes((data / "test" / f"{image_id}_{c}.png").read_bytes())
    url = f"file://{folder}"
    with pytest.raises(HpaDataError, match=rf"{ids[1]}: missing yellow channel"):
        beam_infer.run_beam(presets[0], url, out_dir=tmp_path / "x", beam_options=RUNNER)
    got = beam_infer.run_beam(presets[0], url, out_dir=f"file://{tmp_path}/out", beam_options=RUNNER,
                              skip_bad=True)
    assert got["counters"] == {"images_read": 2, "images_skipped": 1, "images_predicted": 2}
    assert sorted(beam_infer.read_shards(tmp_path / "out")["Id"]) == sorted([ids[0], ids[2]])
    assert beam_infer.read_shards(tmp_path / "out", "skipped")["Id"].tolist() == [ids[1]]


def test_cli_predict_and_embed_beam(data, presets, tmp_path, capsys):
    from hpa_zoo.cli import main

    assert main(["predict", presets[0], "--data", str(data), "--out", str(tmp_path / "p"), "--runner",
                 "FnApiRunner", "--beam-option", "direct_num_workers=1", "--tta", "d4"]) == 0
    out = capsys.readouterr().out
    assert f"images_read={N_TEST}, images_skipped=0, images_predicted={N_TEST}" in out
    assert len(beam_infer.read_shards(tmp_path / "p")) == N_TEST
    assert main(["embed", presets[0], "--data", str(data / "test"), "--out", str(tmp_path / "e"), "--beam",
                 "--runner", "FnApiRunner"]) == 0
    assert beam_infer.read_shards(tmp_path / "e", "features").shape == (N_TEST, 33)


def test_predict_beam_on_a_tfds_dataset_equals_predict(data, presets, tmp_path):
    """A TFDS name: its ``test`` split read with ``tfds.beam.ReadFromTFDS``, resized to the model as
    `hpa_zoo.infer.predict` resizes it, equal to the single-process `predict` on the same dataset."""
    import tfds_hpa
    from hpa_zoo.infer.predict import predict

    tfds_hpa.build("hpa_kaggle", manual_dir=data, config="128", data_dir=tmp_path / "tfds")
    _, single = predict(presets[0], "hpa_kaggle/128", out_dir=tmp_path / "single", data_dir=tmp_path / "tfds",
                        verbose=0)
    got = beam_infer.run_beam(presets[0], "hpa_kaggle/128", data_dir=tmp_path / "tfds", out_dir=tmp_path / "beam",
                              beam_options=RUNNER)
    want = _by_id(pd.read_csv(single, dtype={"Id": str}))
    probs = _by_id(beam_infer.read_shards(tmp_path / "beam"))
    assert list(probs.index) == list(want.index) and got["counters"]["images_read"] == N_TEST
    np.testing.assert_allclose(probs.to_numpy(), want.to_numpy(), rtol=0, atol=1e-6 + 1e-12)


def test_remote_file_list_reads_like_the_local_reader(tmp_path):
    """A list of multi-channel image files on fsspec's ``memory://``: listed on the launcher, decoded by the
    single-process reader (`hpa_zoo.infer.predict_images.read_item`) exactly as the same local files are."""
    fsspec = pytest.importorskip("fsspec")
    import cv2

    from hpa_zoo.infer.predict_images import discover, read_item

    rng = np.random.default_rng(2)
    fs = fsspec.filesystem("memory")
    local, remote = [], []
    for k in range(2):
        path = tmp_path / f"cell{k}.tif"
        cv2.imwrite(str(path), rng.integers(0, 65535, (40, 30, 2), dtype=np.uint16)[..., [0, 1, 0]])
        with fs.open(f"memory://hpa_list_test/cell{k}.tif", "wb") as f:
            f.write(path.read_bytes())
        local.append(str(path))
        remote.append(f"memory://hpa_list_test/cell{k}.tif")
    items, skipped = beam_infer.discover_items(remote, stains=["red", "green", "blue"])
    assert [i[0] for i in items] == ["cell0", "cell1"] and skipped == []
    want_items, _ = discover(local, stains=["red", "green", "blue"])
    for item, want in zip(items, want_items):
        got = beam_infer.read_element(item, n_channels=3, size=32)
        np.testing.assert_array_equal(got, read_item(want, 3, 32))
        assert got.shape == (32, 32, 3) and got.dtype == np.uint8
    with pytest.raises(HpaDataError, match=r"memory://hpa_list_test/nope\.tif: file not found"):
        beam_infer.discover_items([*remote, "memory://hpa_list_test/nope.tif"], stains=["red", "green", "blue"])


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "classify"}, r"mode='classify': use 'predict' or 'embed'"),
    ({"num_shards": -1}, r"num_shards=-1.*--num-shards"),
    ({"batch_size": 0}, r"batch_size=0.*--batch-size"),
    ({"beam_options": ["--runner=NoSuchRunner"]}, r"NoSuchRunner"),
    ({"beam_options": ["direct_num_workers=2"]}, r"not Beam flags"),
])
def test_bad_arguments_are_config_errors(tmp_path, kwargs, message):
    from hpa_zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        beam_infer.run_beam("team4_gapnet_resnet18_512", tmp_path, out_dir=tmp_path / "o", **kwargs)
