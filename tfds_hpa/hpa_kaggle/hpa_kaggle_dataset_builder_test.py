"""Tests of the `hpa_kaggle` builder: the TFDS test case over dummy_data/, and the full-resolution TIFF path."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import tensorflow_datasets as tfds

from hpa_zoo.constants import CHANNELS
from tfds_hpa._common import HpaConfig
from tfds_hpa.hpa_kaggle import hpa_kaggle_dataset_builder


class HpaKaggleTest(tfds.testing.DatasetBuilderTestCase):
    """dummy_data/: 3 labelled train ids, 2 test ids, 32x32 PNGs, built at config 128."""

    DATASET_CLASS = hpa_kaggle_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["128"]
    SPLITS = {"train": 3, "test": 2}
    MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False  # images are read with OpenCV from local files


def _write_kaggle_tree(root, *, full_size_tifs: bool):
    """Kaggle tree, train id ``abc``: 24x24 PNGs in train/ and, optionally, 16-bit 48x48 TIFFs in
    train_full_size/; test id ``t`` (PNGs only, so the test split always falls back)."""
    rng = np.random.default_rng(1)
    for d in ("train", "test", "train_full_size"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text("Id,Target\nabc,3 5\n")
    (root / "sample_submission.csv").write_text("Id,Predicted\nt,0\n")
    tifs = {}
    for c in CHANNELS:
        cv2.imwrite(str(root / "train" / f"abc_{c}.png"), rng.integers(0, 256, (24, 24), dtype=np.uint8))
        cv2.imwrite(str(root / "test" / f"t_{c}.png"), np.zeros((24, 24), np.uint8))
        tifs[c] = rng.integers(0, 65536, (48, 48), dtype=np.uint16)
        if full_size_tifs:
            cv2.imwrite(str(root / "train_full_size" / f"abc_{c}.tif"), tifs[c])
    if not full_size_tifs:
        (root / "train_full_size").rmdir()
    return tifs


def _build_full_size(tmp_path, manual):
    config = HpaConfig(name="32", image_size=32, full_size=True, storage="png")  # 1024/1536 logic, tiny, lossless
    builder = hpa_kaggle_dataset_builder.Builder(config=config, data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    return next(iter(tfds.as_numpy(builder.as_dataset(split="train"))))


def test_full_size_config_resizes_16bit_tiffs_with_inter_linear(tmp_path):
    tifs = _write_kaggle_tree(tmp_path / "manual", full_size_tifs=True)
    example = _build_full_size(tmp_path, tmp_path / "manual")
    # Reference: 16-bit -> 8-bit by x/257 rounded, then cv2 INTER_LINEAR to 32x32, stacked R,G,B,Y.
    want = np.stack([cv2.resize(np.round(tifs[c] / 257.0).astype(np.uint8), (32, 32),
                                interpolation=cv2.INTER_LINEAR) for c in CHANNELS], axis=-1)
    np.testing.assert_array_equal(example["image"], want)
    assert example["multi_hot"].nonzero()[0].tolist() == [3, 5]


def test_full_size_config_falls_back_to_pngs_and_says_so(tmp_path, caplog):
    _write_kaggle_tree(tmp_path / "manual", full_size_tifs=False)
    with caplog.at_level(logging.WARNING, logger="tfds_hpa"):
        example = _build_full_size(tmp_path, tmp_path / "manual")
    assert "train_full_size not found, upsampling the 512x512 PNGs" in caplog.text
    want = np.stack([cv2.resize(cv2.imread(str(tmp_path / "manual" / "train" / f"abc_{c}.png"),
                                           cv2.IMREAD_UNCHANGED), (32, 32), interpolation=cv2.INTER_LINEAR)
                     for c in CHANNELS], axis=-1)
    np.testing.assert_array_equal(example["image"], want)


if __name__ == "__main__":
    tfds.testing.test_main()
