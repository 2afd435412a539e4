"""Both TFDS builders on the real HPA images (`../shared/data/hpa_real_samples`, laid out in tmp dirs).

The lossless ``*_png`` configs must equal the source files pixel for pixel, in R, G, B, Y order: Kaggle PNGs read
independently with PIL; HPAv18 JPEG planes read with cv2 and resized with cv2 INTER_LINEAR (the builder's
documented interpolation). The default RGB+Y JPEG storage must stay within `hpa_zoo.data.rgby_jpeg`'s documented
error bound of the same references. Datasets of the previous builder version (1.0.0, PNG) stay readable.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import tfds_hpa
from hpa_zoo.constants import CHANNELS
from hpa_zoo.data import rgby_jpeg, sources
from hpa_zoo.errors import HpaDataError

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
def kaggle_manual(real_samples_dir, tmp_path_factory):
    manual = tmp_path_factory.mktemp("kaggle_manual")
    (manual / "train.csv").write_text("Id,Target\n30741_800_A6_1,25\n11088_89_B5_1,6\n")
    (manual / "sample_submission.csv").write_text(f"Id,Predicted\n{TEST_ID},0\n")
    for image_id in TRAIN:
        _link(real_samples_dir, manual / "train", image_id, "png")
    _link(real_samples_dir, manual / "test", TEST_ID, "png")
    return manual


@pytest.fixture(scope="module")
def kaggle_builder(kaggle_manual, tmp_path_factory):
    return tfds_hpa.build("hpa_kaggle", manual_dir=kaggle_manual, data_dir=tmp_path_factory.mktemp("tfds"),
                          config="512")


def _pngs(folder, image_id, size=None):
    """(S, S, 4) uint8 R, G, B, Y of one Kaggle field read with PIL (resized with cv2 INTER_LINEAR to ``size``)."""
    planes = [np.asarray(Image.open(folder / f"{image_id}_{c}.png")) for c in CHANNELS]
    if size is not None:
        planes = [cv2.resize(p, (size, size), interpolation=cv2.INTER_LINEAR) for p in planes]
    return np.stack(planes, -1)


def test_kaggle_512_jpeg_default_is_within_the_documented_error_of_the_pngs(kaggle_builder, real_samples_dir):
    assert kaggle_builder.version == "2.0.0" and kaggle_builder.builder_config.storage == "jpeg"
    got = {**_examples(kaggle_builder, "train"), **_examples(kaggle_builder, "test")}
    assert set(got) == set(TRAIN) | {TEST_ID}
    for image_id, ex in got.items():
        want = _pngs(real_samples_dir, image_id)
        assert ex["image"].shape == (512, 512, 4) and ex["image"].dtype == np.uint8
        err = np.abs(ex["image"].astype(np.int16) - want)
        assert err.mean() <= rgby_jpeg.MEAN_ABS_ERROR_BOUND and err.max() <= rgby_jpeg.MAX_ABS_ERROR_BOUND, image_id
        for k in range(4):  # R, G, B, Y order kept: each channel is its own stain
            assert np.corrcoef(ex["image"][..., k].ravel(), want[..., k].ravel())[0, 1] > 0.99, (image_id, k)


def test_kaggle_512_png_storage_equals_the_pngs_in_rgby_order(kaggle_manual, kaggle_builder, real_samples_dir,
                                                              tmp_path):
    builder = tfds_hpa.build("hpa_kaggle", manual_dir=kaggle_manual, data_dir=tmp_path, config="512", storage="png")
    assert builder.builder_config.name == "512_png"
    got = {**_examples(builder, "train"), **_examples(builder, "test")}
    assert set(got) == set(TRAIN) | {TEST_ID}
    for image_id, ex in got.items():
        np.testing.assert_array_equal(ex["image"], _pngs(real_samples_dir, image_id), err_msg=image_id)
    # the default JPEG pair is the smaller storage on real fields (README: 1.6x at 512)
    size = lambda d: sum(f.stat().st_size for f in Path(d).glob("*.tfrecord*"))  # noqa: E731
    assert size(kaggle_builder.data_dir) < 0.8 * size(builder.data_dir)


def test_a_version_1_png_dataset_still_reads_exactly(kaggle_manual, real_samples_dir, tmp_path, caplog):
    from tfds_hpa.hpa_kaggle import hpa_kaggle_dataset_builder

    class BuilderV1(hpa_kaggle_dataset_builder.Builder, skip_registration=True):
        """The builder as released at 1.0.0 (TFDS generates only the current version, so pin it here)."""

        name = "hpa_kaggle"
        VERSION = tfds.core.Version("1.0.0")
        SUPPORTED_VERSIONS = []

    old = BuilderV1(config="128", data_dir=str(tmp_path))
    old.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(kaggle_manual)))
    info = json.loads((tmp_path / "hpa_kaggle" / "128" / "1.0.0" / "features.json").read_text())
    assert "Image" in json.dumps(info) and "RgbyJpeg" not in json.dumps(info)  # stored as the 1.0.0 PNG
    with caplog.at_level(logging.WARNING, logger="hpa_zoo.data.sources"):
        got = {e["id"].decode(): e for e in sources.tfds_dataset("hpa_kaggle/128", "train",
                                                                  data_dir=tmp_path).as_numpy_iterator()}
    assert "version 1.0.0" in caplog.text
    assert f"hpa-zoo prepare --dataset hpa_kaggle --config 128 --manual-dir <the downloaded data> --data-dir " \
           f"{tmp_path}" in caplog.text
    assert set(got) == set(TRAIN)
    for image_id, ex in got.items():
        np.testing.assert_array_equal(ex["image"], _pngs(real_samples_dir, image_id, 128), err_msg=image_id)
        assert np.flatnonzero(ex["multi_hot"]).tolist() == TRAIN[image_id]
    # ... also for a map that asks for the stored bytes (a PNG dataset is decoded as usual)
    ex = next(sources.tfds_dataset("hpa_kaggle/128", "train", data_dir=tmp_path, decode_image=False)
              .as_numpy_iterator())
    assert ex["image"].shape == (128, 128, 4) and rgby_jpeg.ENCODED_KEY not in ex

    # An older version this code cannot read (its image feature is unknown here): a clear error naming the
    # folder, the version and the rebuild command.
    (tmp_path / "hpa_kaggle" / "128" / "1.0.0").rename(tmp_path / "hpa_kaggle" / "128" / "0.5.0")
    features = tmp_path / "hpa_kaggle" / "128" / "0.5.0" / "features.json"
    features.write_text(features.read_text().replace("tensorflow_datasets.core.features.image_feature.Image",
                                                     "tfds_hpa._common.SomeOtherStorage"))
    with pytest.raises(HpaDataError, match=r"128/0\.5\.0: hpa_kaggle version 0\.5\.0 cannot be read .*rebuild it at "
                                           r"version 2\.0\.0: hpa-zoo prepare --dataset hpa_kaggle --config 128"):
        sources.tfds_dataset("hpa_kaggle/128", "train", data_dir=tmp_path)


def test_trainer_reads_a_jpeg_train_split_undecoded_for_team1(kaggle_manual, tmp_path):
    """`Recipe.train_map_reads_jpeg`: the train part keeps the stored pair, the valid part is decoded; a dataset
    stored at another size than the recipe's is decoded (and resized) for both."""
    import pandas as pd

    from hpa_zoo.train import trainer

    tfds_hpa.build("hpa_kaggle", manual_dir=kaggle_manual, data_dir=tmp_path, config="128")
    table = pd.DataFrame({"Id": list(TRAIN), "fold": [0, 1]})
    train, valid, n_train, n_valid = trainer._split_sources("hpa_kaggle/128", table, 0, data_dir=tmp_path,
                                                            image_size=128, train_undecoded=True)
    assert (n_train, n_valid) == (1, 1)
    assert rgby_jpeg.ENCODED_KEY in train.element_spec and "image" not in train.element_spec
    assert valid.element_spec["image"].shape == (128, 128, 4)
    stored = next(train.as_numpy_iterator())
    whole = rgby_jpeg.decode_rgby_jpeg(tf.constant(stored[rgby_jpeg.ENCODED_KEY])).numpy()
    decoded = {e["id"]: e["image"] for e in sources.tfds_dataset("hpa_kaggle/128", "train", data_dir=tmp_path)
               .as_numpy_iterator()}
    np.testing.assert_array_equal(whole, decoded[stored["id"]])
    train64, _, _, _ = trainer._split_sources("hpa_kaggle/128", table, 0, data_dir=tmp_path, image_size=64,
                                              train_undecoded=True)
    assert train64.element_spec["image"].shape == (64, 64, 4)


def test_kaggle_splits_labels_and_multi_hot(kaggle_builder):
    assert kaggle_builder.info.splits["train"].num_examples == 2
    assert kaggle_builder.info.splits["test"].num_examples == 1
    for image_id, ex in _examples(kaggle_builder, "train").items():
        assert ex["labels"].tolist() == TRAIN[image_id]
        assert np.flatnonzero(ex["multi_hot"]).tolist() == TRAIN[image_id]
    test = _examples(kaggle_builder, "test")[TEST_ID]
    assert test["labels"].size == 0 and not test["multi_hot"].any()
    assert kaggle_builder.info.features["labels"].feature.int2str(25) == "Cytosol"


def test_hpa_v18_512_png_pixels_equal_cv2_jpeg_planes_resized_inter_linear(real_samples_dir, tmp_path):
    manual = tmp_path / "original_jpg"
    manual.mkdir()
    (manual / "labels.csv").symlink_to(real_samples_dir / "original_jpg" / "labels.csv")
    for image_id in V18:
        _link(real_samples_dir / "original_jpg", manual, image_id, "jpg")
    builder = tfds_hpa.build("hpa_v18", manual_dir=manual, data_dir=tmp_path / "tfds", config="512", storage="png")
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


def test_prepare_cli_storage_png_builds_the_lossless_config(kaggle_manual, real_samples_dir, tmp_path, capsys):
    from hpa_zoo.cli import main

    argv = ["prepare", "--dataset", "hpa_kaggle", "--manual-dir", str(kaggle_manual), "--data-dir", str(tmp_path),
            "--config", "128", "--storage", "png"]
    assert main(argv) == 0
    assert f"hpa_kaggle/128_png written to {tmp_path / 'hpa_kaggle' / '128_png' / '2.0.0'}" in capsys.readouterr().out
    got = {e["id"].decode(): e for e in sources.tfds_dataset("hpa_kaggle/128_png", "train", data_dir=tmp_path,
                                                              decode_image=False).as_numpy_iterator()}
    assert set(got) == set(TRAIN)
    for image_id, ex in got.items():
        np.testing.assert_array_equal(ex["image"], _pngs(real_samples_dir, image_id, 128), err_msg=image_id)
