"""The Apache Beam build of the TFDS builders (`beam=True`) against the plain build, on tiny synthetic trees.

Runner: ``FnApiRunner``, the in-process engine Beam's DirectRunner runs batch pipelines on when its Prism runner
is not available (DirectRunner would first try to download Prism from GitHub); no network, no cluster.
"""
from __future__ import annotations

import logging
import re

import cv2
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

pytest.importorskip("apache_beam")

import tfds_hpa  # noqa: E402
from hpa_zoo.constants import CHANNELS  # noqa: E402
from hpa_zoo.data import rgby_jpeg  # noqa: E402
from hpa_zoo.errors import ConfigError, HpaDataError  # noqa: E402
from tfds_hpa._common import HpaConfig  # noqa: E402
from tfds_hpa.hpa_kaggle import hpa_kaggle_dataset_builder  # noqa: E402

RUNNER = ["--runner=FnApiRunner"]
TRAIN = {"a": (0,), "b": (3, 5), "c": (27,), "bad_tif": (1,)}
FULL = HpaConfig(name="32", image_size=32, full_size=True, storage="png")  # 1024/1536 full-resolution logic, 32 px, lossless


def _kaggle_tree(root):
    """train: 16-bit 48x48 TIFFs in train_full_size/ (bad_tif's red TIFF cut), one CSV row with a bad Target;
    test: 24x24 PNGs only (read from test/, upsampled). Returns the TIFF planes by id."""
    rng = np.random.default_rng(7)
    for d in ("train", "test", "train_full_size"):
        (root / d).mkdir(parents=True)
    (root / "train.csv").write_text("Id,Target\n" + "".join(f"{i},{' '.join(map(str, t))}\n" for i, t in TRAIN.items())
                                    + "bad_row,5 x\n")
    (root / "sample_submission.csv").write_text("Id,Predicted\nt1,0\nt2,0\n")
    planes = {}
    for image_id in TRAIN:
        planes[image_id] = [rng.integers(0, 65536, (48, 48), dtype=np.uint16) for _ in CHANNELS]
        for c, plane in zip(CHANNELS, planes[image_id]):
            cv2.imwrite(str(root / "train_full_size" / f"{image_id}_{c}.tif"), plane)
    for image_id in ("t1", "t2"):
        for c in CHANNELS:
            cv2.imwrite(str(root / "test" / f"{image_id}_{c}.png"), rng.integers(0, 256, (24, 24), dtype=np.uint8))
    cut = root / "train_full_size" / "bad_tif_red.tif"
    cut.write_bytes(cut.read_bytes()[:64])
    return planes


def _build(tmp_path, manual, name, **kwargs):
    builder = hpa_kaggle_dataset_builder.Builder(config=FULL, data_dir=str(tmp_path / name), **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual), beam_options=tfds_hpa._pipeline_options(RUNNER) if kwargs.get("beam") else None))
    return builder


def _examples(builder, split):
    return {ex["id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def test_beam_build_equals_plain_build_and_reports_the_same_skips(tmp_path, caplog):
    planes = _kaggle_tree(tmp_path / "manual")
    plain = _build(tmp_path, tmp_path / "manual", "plain", on_error="skip")
    with caplog.at_level(logging.INFO, logger="tfds_hpa"):
        beam = _build(tmp_path, tmp_path / "manual", "beam", on_error="skip", beam=True)
    for split, n in (("train", 3), ("test", 2)):
        want, got = _examples(plain, split), _examples(beam, split)
        assert sorted(got) == sorted(want) and len(got) == n == beam.info.splits[split].num_examples
        for image_id, ex in got.items():
            np.testing.assert_array_equal(ex["image"], want[image_id]["image"], err_msg=image_id)
            np.testing.assert_array_equal(ex["labels"], want[image_id]["labels"])
            np.testing.assert_array_equal(ex["multi_hot"], want[image_id]["multi_hot"])
    # independent reference for one full-resolution example: x/257 rounded, cv2 INTER_LINEAR, R,G,B,Y
    ref = np.stack([cv2.resize(np.round(p / 257.0).astype(np.uint8), (32, 32), interpolation=cv2.INTER_LINEAR)
                    for p in planes["b"]], axis=-1)
    np.testing.assert_array_equal(_examples(beam, "train")["b"]["image"], ref)
    assert np.flatnonzero(_examples(beam, "train")["b"]["multi_hot"]).tolist() == [3, 5]
    # same skips, same order, same reasons (the CSV row, then the cut TIFF naming its file), kept in the metadata
    assert beam.skip_report.skipped == plain.skip_report.skipped
    assert [w for w, _ in beam.skip_report.skipped] == ["train.csv line 6 (Id bad_row)", "train bad_tif"]
    assert re.search(r"bad_tif_red\.tif: cannot be decoded .*re-download", beam.skip_report.skipped[1][1])
    reloaded = tfds.builder("hpa_kaggle/32", data_dir=str(tmp_path / "beam"))
    assert reloaded.info.metadata["skipped"] == [list(e) for e in plain.skip_report.skipped]
    # Beam metrics count what each split kept and skipped; the temporary skip files are gone
    assert "train_examples=3, train_skipped=1" in caplog.text and "test_examples=2" in caplog.text
    assert not list((tmp_path / "beam").rglob("*.skipped.json"))


def test_beam_build_raise_mode_stops_at_the_bad_file(tmp_path):
    _kaggle_tree(tmp_path / "manual")
    (tmp_path / "manual" / "train.csv").write_text("Id,Target\na,0\nbad_tif,1\n")
    with pytest.raises(HpaDataError, match=r"bad_tif_red\.tif: cannot be decoded .*re-download"):
        _build(tmp_path, tmp_path / "manual", "beam", beam=True)
    assert not (tmp_path / "beam" / "hpa_kaggle" / "32" / "2.0.0").exists()  # nothing half-written is trusted


def test_prepare_cli_beam_hpa_v18_skips_and_reports(tmp_path, capsys):
    """`hpa-zoo prepare --beam` end to end on the HPAv18 layout (RGB JPEG planes), one JPEG truncated."""
    from hpa_zoo.cli import main

    manual = tmp_path / "v18"
    (manual / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    ids = {"1_A1_1": "0", "1_A1_2": "16 0", "1_A1_3": "5"}
    (manual / "HPAv18RBGY_wodpl.csv").write_text("Id,Target\n" + "".join(f"{i},{t}\n" for i, t in ids.items()))
    rgb = {}
    for image_id in ids:
        for c in CHANNELS:
            rgb[image_id, c] = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            cv2.imwrite(str(manual / "images" / f"{image_id}_{c}.jpg"), rgb[image_id, c])
    cut = manual / "images" / "1_A1_3_green.jpg"
    cut.write_bytes(cut.read_bytes()[:30])
    argv = ["prepare", "--dataset", "hpa_v18", "--manual-dir", str(manual), "--data-dir", str(tmp_path / "tfds"),
            "--config", "128", "--skip-bad", "--runner", "FnApiRunner", "--beam-option", "direct_num_workers=1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "train: 2 examples" in out and "skipped 1 sample(s):\n  train 1_A1_3: " in out and "1_A1_3_green.jpg" in out
    assert "Beam counters: train_examples=2, train_skipped=1" in out
    got = {ex["id"].decode(): ex for ex in tfds.as_numpy(
        tfds.builder("hpa_v18/128", data_dir=str(tmp_path / "tfds")).as_dataset(split="train"))}
    assert sorted(got) == ["1_A1_1", "1_A1_2"]
    # reference: each stain's plane of the decoded JPEG (R, G, B, R; cv2 reads BGR), cv2 INTER_LINEAR to 128,
    # through the default RGB+Y JPEG storage (the library's codec: the workers must store exactly its output)
    bgr = {"red": 2, "green": 1, "blue": 0, "yellow": 2}
    want = np.stack([cv2.resize(cv2.imread(str(manual / "images" / f"1_A1_2_{c}.jpg"))[..., bgr[c]], (128, 128),
                                interpolation=cv2.INTER_LINEAR) for c in CHANNELS], axis=-1)
    stored = rgby_jpeg.decode_rgby_jpeg(tf.constant(rgby_jpeg.encode_rgby_jpeg(want))).numpy()
    np.testing.assert_array_equal(got["1_A1_2"]["image"], stored)
    assert np.flatnonzero(got["1_A1_2"]["multi_hot"]).tolist() == [0, 16]


@pytest.mark.parametrize("argv, message", [
    (["--beam-option", "direct_num_workers"], r"--beam-option 'direct_num_workers': write NAME=VALUE"),
    (["--runner", "NoSuchRunner"], r"NoSuchRunner"),
])
def test_prepare_cli_bad_beam_arguments_fail_clearly(tmp_path, capsys, argv, message):
    from hpa_zoo.cli import main

    manual = tmp_path / "m"
    manual.mkdir()
    (manual / "labels.csv").write_text("Id,Target\n")
    code = main(["prepare", "--dataset", "hpa_v18", "--manual-dir", str(manual), "--data-dir", str(tmp_path / "t"),
                 *argv])
    assert code == 1 and re.search(message, capsys.readouterr().err)


def test_beam_without_apache_beam_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "apache_beam.options.pipeline_options", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"needs apache-beam .*pip install 'hpa-zoo\[beam\]'"):
        tfds_hpa._pipeline_options([])


def test_build_rejects_beam_options_that_are_not_flags():
    with pytest.raises(ConfigError, match=r"\['runner=DirectRunner'\] are not Beam flags; write them as --name=value"):
        tfds_hpa._pipeline_options(["runner=DirectRunner"])
    with pytest.raises(ConfigError, match=r"pass a list of flags"):
        tfds_hpa._pipeline_options("--runner=DirectRunner")
    assert tfds_hpa._pipeline_options([]).get_all_options()["runner"] == "DirectRunner"
