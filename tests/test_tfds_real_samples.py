"""Both TFDS builders on the real HPA images (`../shared/data/hpa_real_samples`, laid out in tmp dirs).

The decoded examples must equal the source files pixel for pixel, in R, G, B, Y order: Kaggle PNGs read
independently with PIL; HPAv18 JPEG planes read with cv2 and resized with cv2 INTER_LINEAR (the builder's
documented interpolation).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import tfds_hpa
from hpa_zoo.constants import CHANNELS

TEST_ID = "b478cc78-bad4-11e8-b2b8-ac1f6b6435d0"  # a Kaggle test image (SOURCES.md)
TRAIN = {"30741_800_A6_1": [25], "11088_89_B5_1": [6]}
V18 = {"57639_1283_B2_10": [0, 16], "30741_800_A6_1": [25], "11088_89_B5_1": [6]}


def _link(src_dir, dst_dir, image_id, ext):
    dst_dir.mkdir(parents=True, exist_ok=True)
    for c in CHANNELS:
        (dst_dir / f"{image_id}_{c}.{ext}").symlink_to(src_dir / f"{image_id}_{c}.{ext}")


def _examples(builder, split):
    return {ex["id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


@pytest.fixture(scope="module")
def kaggle_builder(real_samples_dir, tmp_path_factory):
    manual = tmp_path_factory.mktemp("kaggle_manual")
    (manual / "train.csv").write_text("Id,Target\n30741_800_A6_1,25\n11088_89_B5_1,6\n")
    (manual / "sample_submission.csv").write_text(f"Id,Predicted\n{TEST_ID},0\n")
    for image_id in TRAIN:
        _link(real_samples_dir, manual / "train", image_id, "png")
    _link(real_samples_dir, manual / "test", TEST_ID, "png")
    return tfds_hpa.build("hpa_kaggle", manual_dir=manual, data_dir=tmp_path_factory.mktemp("tfds"), config="512")


def test_kaggle_512_pixels_equal_the_pngs_in_rgby_order(kaggle_builder, real_samples_dir):
    got = {**_examples(kaggle_builder, "train"), **_examples(kaggle_builder, "test")}
    assert set(got) == set(TRAIN) | {TEST_ID}
    for image_id, ex in got.items():
        want = np.stack([np.asarray(Image.open(real_samples_dir / f"{image_id}_{c}.png")) for c in CHANNELS], -1)
        assert ex["image"].shape == (512, 512, 4) and ex["image"].dtype == np.uint8
        np.testing.assert_array_equal(ex["image"], want, err_msg=image_id)


def test_kaggle_splits_labels_and_multi_hot(kaggle_builder):
    assert kaggle_builder.info.splits["train"].num_examples == 2
    assert kaggle_builder.info.splits["test"].num_examples == 1
    for image_id, ex in _examples(kaggle_builder, "train").items():
        assert ex["labels"].tolist() == TRAIN[image_id]
        assert np.flatnonzero(ex["multi_hot"]).tolist() == TRAIN[image_id]
    test = _examples(kaggle_builder, "test")[TEST_ID]
    assert test["labels"].size == 0 and not test["multi_hot"].any()
    assert kaggle_builder.info.features["labels"].feature.int2str(25) == "Cytosol"


def test_hpa_v18_512_pixels_equal_cv2_jpeg_planes_resized_inter_linear(real_samples_dir, tmp_path):
    manual = tmp_path / "original_jpg"
    manual.mkdir()
    (manual / "labels.csv").symlink_to(real_samples_dir / "original_jpg" / "labels.csv")
    for image_id in V18:
        _link(real_samples_dir / "original_jpg", manual, image_id, "jpg")
    builder = tfds_hpa.build("hpa_v18", manual_dir=manual, data_dir=tmp_path / "tfds", config="512")
    got = _examples(builder, "train")
    assert set(got) == set(V18)
    bgr_index = {"red": 2, "green": 1, "blue": 0, "yellow": 2}  # the stain's plane: R, G, B, R (cv2 is BGR)
    for image_id, ex in got.items():
        want = np.stack([cv2.resize(cv2.imread(str(manual / f"{image_id}_{c}.jpg"), cv2.IMREAD_COLOR)[..., bgr_index[c]],
                                    (512, 512), interpolation=cv2.INTER_LINEAR) for c in CHANNELS], -1)
        np.testing.assert_array_equal(ex["image"], want, err_msg=image_id)
        assert np.flatnonzero(ex["multi_hot"]).tolist() == V18[image_id]
    # Independent cross-check of plane choice and channel order: the Kaggle-style PNGs of the same fields
    # (made with Lanczos, SOURCES.md) correlate per channel and share the intensity scale (a luma conversion
    # would shrink red and blue several-fold).
    for image_id in TRAIN:
        for k, c in enumerate(CHANNELS):
            ours = got[image_id]["image"][..., k].astype(np.float64)
            ref = np.asarray(Image.open(real_samples_dir / f"{image_id}_{c}.png"), np.float64)
            assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.99, (image_id, c)
            assert ours.mean() == pytest.approx(ref.mean(), rel=0.02), (image_id, c)
