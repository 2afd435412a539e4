"""Bad input never becomes a silently wrong example: each case stops the build with an HpaDataError naming the
file or CSV line, and ``on_error="skip"`` leaves exactly the bad samples out and reports them."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_hpa
from hpa_zoo.constants import CHANNELS
from hpa_zoo.errors import HpaDataError
from tfds_hpa._common import HpaConfig
from tfds_hpa.hpa_kaggle import hpa_kaggle_dataset_builder
from tfds_hpa.hpa_v18 import hpa_v18_dataset_builder

GOOD = {"good1": "0", "good2": "25 7"}
TINY = HpaConfig(name="16", image_size=16)  # a 16x16 config keeps each build fast


def _write_sample(folder, image_id, *, size=16, value=40):
    folder.mkdir(parents=True, exist_ok=True)
    for k, c in enumerate(CHANNELS):
        cv2.imwrite(str(folder / f"{image_id}_{c}.png"), np.full((size, size), value + k, np.uint8))


def _kaggle_tree(root, extra_rows=""):
    """Kaggle layout with two good train samples, one test sample, plus ``extra_rows`` appended to train.csv."""
    for image_id in GOOD:
        _write_sample(root / "train", image_id)
    _write_sample(root / "test", "test1")
    (root / "train.csv").write_text("Id,Target\n" + "".join(f"{i},{t}\n" for i, t in GOOD.items()) + extra_rows)
    (root / "sample_submission.csv").write_text("Id,Predicted\ntest1,0\n")
    return root


# Each case: (extra train.csv rows, how to damage the tree, regex the error must match).
def _missing_channel(root):
    _write_sample(root / "train", "bad")
    (root / "train" / "bad_yellow.png").unlink()


def _truncated(root):
    _write_sample(root / "train", "bad")
    path = root / "train" / "bad_green.png"
    path.write_bytes(path.read_bytes()[:40])


def _sizes_differ(root):
    _write_sample(root / "train", "bad")
    cv2.imwrite(str(root / "train" / "bad_blue.png"), np.zeros((20, 20), np.uint8))


def _nothing(root):
    pass


CASES = {
    "missing_channel": ("bad,1\n", _missing_channel, r"train: missing yellow channel of image 'bad' .*bad_yellow\.png"),
    "truncated_image": ("bad,1\n", _truncated, r"bad_green\.png: cannot be decoded .*re-download"),
    "channel_sizes_differ": ("bad,1\n", _sizes_differ, r"image 'bad' have different sizes \(red 16x16, green 16x16, blue 20x20"),
    "label_out_of_range": ("bad,3 28\n", _nothing, r"train\.csv line 4 \(Id bad\): .*class id 28, outside 0\.\.27"),
    "malformed_target": ("bad,1 x\n", _nothing, r"train\.csv line 4 \(Id bad\): .*'x', which is not an integer"),
    "duplicate_id": ("good1,2\n", _nothing, r"train\.csv line 4 \(Id good1\): duplicate Id 'good1', first seen on line 2"),
}


def _kaggle_builder(tmp_path, **kwargs):
    return hpa_kaggle_dataset_builder.Builder(config=TINY, data_dir=str(tmp_path / "tfds"), **kwargs)


def _prepare(builder, manual):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    return builder


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_kaggle_input_raises_naming_file_or_row(tmp_path, case):
    rows, damage, message = CASES[case]
    manual = _kaggle_tree(tmp_path / "manual", rows)
    damage(manual)
    with pytest.raises(HpaDataError, match=message):
        _prepare(_kaggle_builder(tmp_path), manual)


@pytest.mark.parametrize("missing", ["train.csv", "sample_submission.csv", "test"])
def test_missing_manual_file_or_folder_fails_at_once_with_the_tree(tmp_path, missing):
    manual = _kaggle_tree(tmp_path / "manual")
    target = manual / missing
    if target.is_dir():
        for f in target.iterdir():
            f.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(HpaDataError, match=rf"missing {missing}/?(?:,|\s)") as info:
        _prepare(_kaggle_builder(tmp_path), manual)
    assert "train_full_size/" in str(info.value) and "--manual_dir" in str(info.value)  # the expected tree
    assert not (tmp_path / "tfds" / "hpa_kaggle" / "16" / "2.0.0").exists()


def test_missing_manual_dir_fails_with_the_tree(tmp_path):
    with pytest.raises(HpaDataError, match=r"does not exist or is empty(.|\n)*sample_submission\.csv"):
        _prepare(_kaggle_builder(tmp_path), tmp_path / "nowhere")
    with pytest.raises(HpaDataError, match=r"nowhere: manual-download folder not found(.|\n)*HPAv18RBGY_wodpl"):
        tfds_hpa.build("hpa_v18", manual_dir=tmp_path / "nowhere", data_dir=tmp_path / "tfds")


def test_bad_hpa_v18_row_and_image_raise_naming_them(tmp_path):
    manual = tmp_path / "v18"
    _write_sample(manual, "1_2_A1_1")
    (manual / "my_labels.csv").write_text("Id,Target\n1_2_A1_1,0\n1_2_A1_2,5\n")
    with pytest.raises(HpaDataError, match=r"missing red channel of image '1_2_A1_2'"):
        _prepare(hpa_v18_dataset_builder.Builder(config=TINY, data_dir=str(tmp_path / "tfds")), manual)
    (manual / "my_labels.csv").write_text("Id,Target\n1_2_A1_1,0;;\n1_2_A1_2,\n")
    with pytest.raises(HpaDataError, match=r"my_labels\.csv line 3 \(Id 1_2_A1_2\): Target is empty"):
        _prepare(hpa_v18_dataset_builder.Builder(config=TINY, data_dir=str(tmp_path / "tfds2")), manual)


def test_skip_option_leaves_out_every_bad_sample_and_reports_them(tmp_path, caplog):
    manual = _kaggle_tree(tmp_path / "manual")
    # One sample per image-level case, named after it; the CSV-level cases are rows of their own.
    image_cases = {"missing_channel": _missing_channel, "truncated_image": _truncated, "channel_sizes_differ": _sizes_differ}
    lines = ["Id,Target"] + [f"{i},{t}" for i, t in GOOD.items()] + [f"{c},1" for c in image_cases]
    lines += ["bad_label,3 28", "bad_target,1 x", "good1,2"]
    (manual / "train.csv").write_text("\n".join(lines) + "\n")
    for case, damage in image_cases.items():
        damage(manual)
        for c in CHANNELS:  # rename the damaged "bad" sample to the case's own id
            src = manual / "train" / f"bad_{c}.png"
            if src.exists():
                src.rename(manual / "train" / f"{case}_{c}.png")
    # The way `tfds build hpa_kaggle/128:2.0.0/on_error=skip` passes the option: in the dataset name.
    builder = tfds.builder("hpa_kaggle/128:2.0.0/on_error=skip", data_dir=str(tmp_path / "tfds"))
    with caplog.at_level(logging.WARNING, logger="tfds_hpa"):
        _prepare(builder, manual)
    assert builder.on_error == "skip"
    skipped = [what for what, _ in builder.skip_report.skipped]
    assert skipped == ["train.csv line 7 (Id bad_label)", "train.csv line 8 (Id bad_target)",
                       "train.csv line 9 (Id good1)", "train missing_channel", "train truncated_image",
                       "train channel_sizes_differ"]
    assert "skipped 6 sample(s)" in caplog.text and "train truncated_image" in caplog.text
    ids = sorted(ex["id"].decode() for ex in tfds.as_numpy(builder.as_dataset(split="train")))
    assert ids == sorted(GOOD)
    assert builder.info.splits["test"].num_examples == 1
    reloaded = tfds.builder("hpa_kaggle/128", data_dir=str(tmp_path / "tfds"))
    assert [w for w, _ in reloaded.info.metadata["skipped"]] == skipped  # kept with the dataset


def test_prepare_cli_skip_bad_prints_split_counts_and_skipped_samples(tmp_path, capsys):
    from hpa_zoo.cli import main

    manual = _kaggle_tree(tmp_path / "manual", "bad,1\n")
    _missing_channel(manual)
    argv = ["prepare", "--dataset", "hpa_kaggle", "--manual-dir", str(manual), "--data-dir", str(tmp_path / "tfds"),
            "--config", "128"]
    assert main(argv) == 1  # without --skip-bad the bad sample stops the build
    assert "bad_yellow.png" in capsys.readouterr().err
    for _ in range(2):  # the second run reuses the prepared dataset and still reports what was skipped
        assert main(argv + ["--skip-bad"]) == 0
        out = capsys.readouterr().out
        assert "train: 2 examples" in out and "test: 1 examples" in out
        assert str(tmp_path / "tfds" / "hpa_kaggle" / "128" / "2.0.0") in out
        assert "skipped 1 sample(s):\n  train bad: " in out
