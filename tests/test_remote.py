"""Cloud-style inputs on fsspec's in-memory file system (``memory://``, the library's own, no mock of ours):
`prepare --beam` from a remote manual-download folder, remote presets and fine-tuning CSVs staged into the cache.

References: the same data built / predicted from the local folder, and cv2 reading the local files directly.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import pandas as pd
import pytest

fsspec = pytest.importorskip("fsspec")

from hpa_zoo import remote  # noqa: E402
from hpa_zoo.constants import CHANNELS  # noqa: E402
from hpa_zoo.errors import HpaDataError  # noqa: E402

RUNNER = ["--runner=FnApiRunner"]  # Beam's in-process engine (test_beam_build.py: no Prism download)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HPA_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HPA_ZOO_OFFLINE", raising=False)


def _to_memory(local, url: str) -> str:
    """Copy a local folder tree into fsspec's memory file system under ``url`` (a fresh bucket)."""
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)
    for dirpath, _, files in os.walk(local):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), local).replace(os.sep, "/")
            fs.pipe(f"{url}/{rel}", open(os.path.join(dirpath, name), "rb").read())
    return url


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    from hpa_zoo.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "kaggle", n_train=3, n_test=2, size=48,
                                   seed=3, workers=1, progress=False)


def _examples(builder, split):
    import tensorflow_datasets as tfds

    return {ex["id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


# ---------------------------------------------------------------------------------------------- the file functions
def test_file_functions_agree_on_local_and_memory_paths(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.csv").write_bytes(b"Id\nx\n")
    (tmp_path / "d" / "sub" / "b.png").write_bytes(b"\x89PNG")
    url = _to_memory(tmp_path / "d", "memory://files_test/d")
    for root in (str(tmp_path / "d"), url, f"file://{tmp_path / 'd'}"):
        assert remote.list_folder(root) == ["a.csv"], root
        assert remote.is_dir(root) and remote.is_dir(remote.join(root, "sub")) and not remote.is_file(root)
        assert remote.is_file(remote.join(root, "a.csv")) and not remote.is_dir(remote.join(root, "a.csv"))
        assert remote.read_bytes(remote.join(root, "sub", "b.png")) == b"\x89PNG"
        with remote.open_file(remote.join(root, "a.csv"), "r") as f:
            assert f.read() == "Id\nx\n"
        assert not remote.exists(remote.join(root, "nope.csv"))
    assert remote.join(url, "sub", "b.png") == "memory://files_test/d/sub/b.png"  # pathlib would fold the //
    assert remote.parent(url + "/a.csv") == url and remote.base_name(url + "/a.csv") == "a.csv"
    with pytest.raises(HpaDataError, match="memory://files_test/d/nope.csv: cannot be read"):
        remote.read_bytes(url + "/nope.csv")
    with pytest.raises(HpaDataError, match="memory://files_test/none: folder not found"):
        remote.list_folder("memory://files_test/none")
    from hpa_zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="nosuchscheme://b/x: no fsspec protocol or Beam file system"):
        remote.read_bytes("nosuchscheme://b/x")


# ---------------------------------------------------------------------------------------------- prepare
def test_prepare_beam_from_memory_equals_the_local_build(kaggle, tmp_path, capsys):
    """`hpa-zoo prepare --beam` on a memory:// Kaggle folder: the examples equal the plain local build's (ids,
    labels, pixels exactly), and one is within the JPEG storage's error of cv2 reading the local PNGs (independent
    reference)."""
    pytest.importorskip("apache_beam")
    import tfds_hpa
    from hpa_zoo.cli import main

    url = _to_memory(kaggle, "memory://prepare_test/kaggle")
    local = tfds_hpa.build("hpa_kaggle", manual_dir=kaggle, data_dir=tmp_path / "local", config="128")
    assert main(["prepare", "--dataset", "hpa_kaggle", "--manual-dir", url, "--data-dir", str(tmp_path / "remote"),
                 "--config", "128", "--beam", "--runner", "FnApiRunner"]) == 0
    out = capsys.readouterr().out
    assert f"from {url}" in out and "train: 3 examples" in out and "Beam counters: " in out
    import tensorflow_datasets as tfds

    built = tfds.builder_from_directory(str(next((tmp_path / "remote").glob("hpa_kaggle/128/*"))))
    for split, n in (("train", 3), ("test", 2)):
        want, got = _examples(local, split), _examples(built, split)
        assert sorted(got) == sorted(want) and len(got) == n
        for image_id, ex in got.items():
            np.testing.assert_array_equal(ex["image"], want[image_id]["image"], err_msg=image_id)
            np.testing.assert_array_equal(ex["labels"], want[image_id]["labels"])
            np.testing.assert_array_equal(ex["multi_hot"], want[image_id]["multi_hot"])
    first = pd.read_csv(kaggle / "train.csv", dtype=str)["Id"][0]
    ref = np.stack([cv2.resize(cv2.imread(str(kaggle / "train" / f"{first}_{c}.png"), cv2.IMREAD_UNCHANGED),
                               (128, 128), interpolation=cv2.INTER_LINEAR) for c in CHANNELS], axis=-1)
    # the default storage is RGB+Y JPEG (hpa_zoo.data.rgby_jpeg): within its documented error of the PNGs
    from hpa_zoo.data import rgby_jpeg

    err = np.abs(_examples(built, "train")[first]["image"].astype(int) - ref.astype(int))
    assert err.mean() <= rgby_jpeg.MEAN_ABS_ERROR_BOUND and err.max() <= rgby_jpeg.MAX_ABS_ERROR_BOUND


def test_prepare_from_memory_skips_and_names_the_remote_file(kaggle, tmp_path):
    """Plain build from memory://: a truncated remote PNG is skipped with its URL in the report; a missing
    folder is an HpaDataError naming the URL and the expected layout."""
    import tfds_hpa

    url = _to_memory(kaggle, "memory://prepare_bad/kaggle")
    bad = pd.read_csv(kaggle / "train.csv", dtype=str)["Id"][1]
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{url}/train/{bad}_blue.png", fs.cat(f"{url}/train/{bad}_blue.png")[:50])
    builder = tfds_hpa.build("hpa_kaggle", manual_dir=url, data_dir=tmp_path / "skip", config="128", on_error="skip")
    assert builder.info.splits["train"].num_examples == 2
    assert [what for what, _ in builder.skip_report.skipped] == [f"train {bad}"]
    assert f"{url}/train/{bad}_blue.png: cannot be decoded" in builder.skip_report.skipped[0][1]
    with pytest.raises(HpaDataError, match="memory://prepare_bad/nothing: manual-download folder not found"):
        tfds_hpa.build("hpa_kaggle", manual_dir="memory://prepare_bad/nothing", data_dir=tmp_path / "x")
    from hpa_zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="data_dir='memory://out': TFDS writes datasets through etils.epath"):
        tfds_hpa.build("hpa_kaggle", manual_dir=url, data_dir="memory://out", config="128")
    fs.rm(f"{url}/sample_submission.csv")
    with pytest.raises(HpaDataError, match=r"memory://prepare_bad/kaggle: missing sample_submission.csv"):
        tfds_hpa.build("hpa_kaggle", manual_dir=url, data_dir=tmp_path / "y", config="128")


def test_prepare_hpa_v18_from_memory_finds_the_csv_and_equals_local(tmp_path):
    import tfds_hpa

    dummy = os.path.join(os.path.dirname(tfds_hpa.__file__), "hpa_v18", "dummy_data")
    url = _to_memory(dummy, "memory://v18_test/manual")
    local = tfds_hpa.build("hpa_v18", manual_dir=dummy, data_dir=tmp_path / "local", config="128")
    built = tfds_hpa.build("hpa_v18", manual_dir=url, data_dir=tmp_path / "remote", config="128")
    want, got = _examples(local, "train"), _examples(built, "train")
    assert sorted(got) == sorted(want) and got
    for image_id, ex in got.items():
        np.testing.assert_array_equal(ex["image"], want[image_id]["image"], err_msg=image_id)


# ---------------------------------------------------------------------------------------------- staging
def test_stage_copies_once_refreshes_on_change_and_works_offline(tmp_path, monkeypatch):
    from hpa_zoo.zoo.weights import stage_remote

    (tmp_path / "p" / "assets").mkdir(parents=True)
    (tmp_path / "p" / "metadata.json").write_text('{"v": 1}')
    (tmp_path / "p" / "assets" / "w.bin").write_bytes(bytes(range(256)))
    url = _to_memory(tmp_path / "p", "memory://stage_test/preset")
    got = stage_remote(url)
    assert got.is_dir() and str(got).startswith(str(tmp_path / "cache" / "remote"))
    assert (got / "assets" / "w.bin").read_bytes() == bytes(range(256))
    before = os.stat(got / "metadata.json").st_ino
    assert stage_remote(url + "/") == got and os.stat(got / "metadata.json").st_ino == before  # reused
    fsspec.filesystem("memory").pipe(url + "/metadata.json", b'{"v": 2}')
    assert stage_remote(url) == got and (got / "metadata.json").read_text() == '{"v": 2}'  # refreshed
    assert not [p for p in got.parent.parent.iterdir() if p.name.endswith(".tmp")]  # nothing half-written left
    monkeypatch.setenv("HPA_ZOO_OFFLINE", "1")
    fsspec.filesystem("memory").rm(url, recursive=True)
    assert (stage_remote(url) / "metadata.json").read_text() == '{"v": 2}'  # offline: the copy, remote untouched
    with pytest.raises(HpaDataError, match="memory://stage_test/other: no local copy"):
        stage_remote("memory://stage_test/other")
    monkeypatch.delenv("HPA_ZOO_OFFLINE")
    with pytest.raises(HpaDataError, match="memory://stage_test/other: not found"):
        stage_remote("memory://stage_test/other")


def test_load_a_remote_preset_equals_the_local_one(tmp_path, tiny_registry_model, tiny_rgby_model):
    import hpa_zoo

    preset = hpa_zoo.save_preset(tiny_rgby_model, tmp_path / "preset", model_name=tiny_registry_model,
                                 metadata={"thresholds": [0.4] * 28})
    url = _to_memory(preset, "memory://preset_test/p")
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 4)).astype("float32")
    want = np.asarray(hpa_zoo.load(preset)(x))
    np.testing.assert_array_equal(np.asarray(hpa_zoo.load(url)(x)), want)
    assert hpa_zoo.preset_info(url)["thresholds"] == [0.4] * 28


def test_predict_and_finetune_read_a_remote_csv(kaggle, tmp_path, tiny_registry_model, tiny_rgby_model):
    """A fine-tuning CSV on memory:// (its images beside it): predict_images gives the local CSV's probabilities;
    finetune reads the same images (staged: only the listed files) and records the URLs it was given."""
    import hpa_zoo
    from hpa_zoo.infer.predict_images import predict_images
    from hpa_zoo.train.finetune import finetune

    ids = pd.read_csv(kaggle / "train.csv", dtype=str)["Id"].tolist()
    rows = [{"filenames": ";".join(f"kaggle/train/{i}_{c}.png" for c in CHANNELS), "labels": lab}
            for i, lab in zip(ids, ["Nucleoplasm", "Cytosol", "Nucleoplasm"])]
    pd.DataFrame(rows).to_csv(kaggle.parent / "ft.csv", index=False)
    url = _to_memory(kaggle.parent, "memory://csv_test/root")
    preset = hpa_zoo.save_preset(tiny_rgby_model, tmp_path / "preset", model_name=tiny_registry_model)
    from hpa_zoo.cli import main

    base = _to_memory(preset, "memory://csv_test/base")  # the preset is remote too
    local = pd.read_csv(predict_images(str(preset), kaggle.parent / "ft.csv", out_dir=tmp_path / "l", verbose=0)
                        ["probabilities"])
    assert main(["predict", base, "--data", url + "/ft.csv", "--out", str(tmp_path / "r"), "--runtime", "keras"]) == 0
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "r" / "probabilities.csv").to_numpy(), local.to_numpy())
    staged = next((tmp_path / "cache" / "remote").glob("*/root"))
    assert sorted(p.name for p in (staged / "kaggle" / "train").iterdir()) == sorted(
        f"{i}_{c}.png" for i in ids for c in CHANNELS) and not (staged / "kaggle" / "test").exists()
    out = finetune(base, url + "/ft.csv", None, out_dir=tmp_path / "ft", epochs=1, freeze_epochs=0, image_size=64,
                   batch_size=2, val_fraction=0.34, verbose=0)
    meta = hpa_zoo.preset_info(out)["metadata"]
    assert meta["training_data"]["csv"] == url + "/ft.csv" and meta["training_data"]["n_images"] == 3


def test_predict_beam_reads_a_remote_csv_with_remote_images(kaggle, tmp_path, tiny_registry_model, tiny_rgby_model):
    """`predict --beam` on a memory:// fine-tuning CSV: the CSV is read from a staged copy, the images stay remote
    (read by the workers); the probabilities equal the single-process run on the local CSV."""
    pytest.importorskip("apache_beam")
    import hpa_zoo
    from hpa_zoo.infer import beam as beam_infer
    from hpa_zoo.infer.predict_images import predict_images

    ids = pd.read_csv(kaggle / "sample_submission.csv", dtype=str)["Id"].tolist()
    pd.DataFrame({"Id": ids, "filenames": [";".join(f"test/{i}_{c}.png" for c in CHANNELS) for i in ids]}).to_csv(
        kaggle / "pred.csv", index=False)
    url = _to_memory(kaggle, "memory://beam_csv_test/kaggle")
    preset = hpa_zoo.save_preset(tiny_rgby_model, tmp_path / "preset", model_name=tiny_registry_model)
    want = pd.read_csv(predict_images(str(preset), kaggle / "pred.csv", out_dir=tmp_path / "l", verbose=0)
                       ["probabilities"], dtype={"Id": str}).set_index("Id").sort_index()
    got = beam_infer.run_beam(str(preset), url + "/pred.csv", out_dir=tmp_path / "b", beam_options=RUNNER)
    assert got["counters"]["images_predicted"] == len(ids)
    shards = beam_infer.read_shards(tmp_path / "b").set_index("Id").sort_index()
    # Both sides are written at 6 decimals ("%.6f"); Beam batches the images differently, so a float32 difference of
    # an ulp can flip the last digit: one step of 1e-6 (seen on a 2-core AMD EPYC: 3 of 56 values), plus the
    # decimal->binary rounding of that step. A real difference in what is predicted is orders larger.
    np.testing.assert_allclose(shards.to_numpy(), want.to_numpy(), rtol=0, atol=1e-6 + 1e-9)
    staged = list((tmp_path / "cache" / "remote").glob("*/*"))
    assert [p.name for p in staged if p.name != remote.MANIFEST] == ["pred.csv"]  # the CSV only, no image copied
