"""The bad-input catalogue: one row per thing a user can hand in wrongly, through the real entry points.

Each row is (entry point, how the input is damaged, the expected outcome): an exception type plus a regex that
names the file / row / value *and* the fix, or ``OK`` for input that must be handled (a byte-order mark,
Windows line endings, an all-zero image), or a documented limitation. docs/BAD_INPUT.md lists the same rows.
Tiny data: 16-32 px images, the tiny CNN row of tests/test_training.py for the model/weights cases.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf


from hpa_zoo.constants import CHANNELS  # noqa: E402
from hpa_zoo.errors import ConfigError, HpaDataError, UnknownModelError, WeightsError  # noqa: E402

OK = "handled"  # the row must run without an error and pass its check


# ---------------------------------------------------------------------------------------------- inputs
def _sample(folder: Path, image_id="a", size=16, value=40, dtype=np.uint8, ext=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for k, c in enumerate(CHANNELS):
        cv2.imwrite(str(folder / f"{image_id}_{c}{ext}"), np.full((size, size), value + k, dtype))
    return folder


def _csv(path: Path, text: str, encoding="utf-8", newline="\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


def _kaggle(tmp: Path, rows="Id,Target\na,0\nb,1 2\n"):
    _sample(tmp / "train", "a")
    _sample(tmp / "train", "b")
    return _csv(tmp / "train.csv", rows)


def _read(tmp, image_id="a", **kw):
    from hpa_zoo.data.images import load_rgby

    return load_rgby(tmp / "train", image_id, **kw)


def _iterate(ds):
    return [e for e in ds.as_numpy_iterator()]


# images ----------------------------------------------------------------------------------------
def corrupt_png(tmp):
    _sample(tmp / "train")
    (tmp / "train" / "a_green.png").write_bytes(os.urandom(300))
    return _read(tmp)


def truncated_png(tmp):
    _sample(tmp / "train", size=32, value=1)
    path = tmp / "train" / "a_blue.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return _read(tmp)


def corrupt_tiff(tmp):
    _sample(tmp / "train", ext=".tif")
    path = tmp / "train" / "a_red.tif"
    path.write_bytes(path.read_bytes()[:12])
    return _read(tmp, allow_16bit=True)


def corrupt_jpeg_hpav18(tmp):
    folder = tmp / "train"
    folder.mkdir(parents=True)
    for c in CHANNELS:
        cv2.imwrite(str(folder / f"a_{c}.jpg"), np.full((16, 16, 3), 90, np.uint8))
    (folder / "a_yellow.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(64))
    return _read(tmp, layout="hpav18")


def colour_png_in_kaggle_layout(tmp):
    _sample(tmp / "train")
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 1] = 200
    cv2.imwrite(str(tmp / "train" / "a_green.png"), rgb)
    return _read(tmp)


def channel_sizes_differ(tmp):
    _sample(tmp / "train")
    cv2.imwrite(str(tmp / "train" / "a_yellow.png"), np.zeros((20, 16), np.uint8))
    return _read(tmp)


def sixteen_bit_where_8_expected(tmp):
    _sample(tmp / "train")
    cv2.imwrite(str(tmp / "train" / "a_red.png"), np.full((16, 16), 3000, np.uint16))
    return _read(tmp)


def eight_bit_where_16_expected(tmp):
    from hpa_zoo.data.images import read_channel

    _sample(tmp / "train", ext=".tif")
    return read_channel(tmp / "train" / "a_red.tif", expect_dtype="uint16")


def sixteen_bit_tiff_when_allowed(tmp):
    _sample(tmp / "train", dtype=np.uint16, value=65535 - 10, ext=".tif")
    img = _read(tmp, allow_16bit=True)
    assert img.dtype == np.uint8 and img.shape == (16, 16, 4) and int(img.max()) == 255


def empty_file(tmp):
    _sample(tmp / "train")
    (tmp / "train" / "a_red.png").write_bytes(b"")
    return _read(tmp)


def missing_channel_file(tmp):
    _sample(tmp / "train")
    (tmp / "train" / "a_yellow.png").unlink()
    return _read(tmp)


def all_zero_image(tmp):
    _sample(tmp / "train", value=0)
    for c in CHANNELS:
        cv2.imwrite(str(tmp / "train" / f"a_{c}.png"), np.zeros((16, 16), np.uint8))
    img = _read(tmp)
    assert img.shape == (16, 16, 4) and not img.any()  # valid data (an empty field of view): no error


def pipeline_channel_sizes_differ(tmp):
    from hpa_zoo.data.sources import folder_dataset

    csv = _kaggle(tmp)
    cv2.imwrite(str(tmp / "train" / "b_blue.png"), np.zeros((20, 20), np.uint8))
    return _iterate(folder_dataset(tmp / "train", csv))


def pipeline_corrupt_png(tmp):
    from hpa_zoo.data.sources import folder_dataset

    csv = _kaggle(tmp)
    (tmp / "train" / "b_green.png").write_bytes(os.urandom(200))
    return _iterate(folder_dataset(tmp / "train", csv))


def pipeline_truncated_png(tmp):
    from hpa_zoo.data.sources import folder_dataset

    csv = _kaggle(tmp)
    path = tmp / "train" / "b_yellow.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # valid signature, data cut
    return _iterate(folder_dataset(tmp / "train", csv))


def pipeline_truncated_jpeg_hpav18(tmp):
    from hpa_zoo.data.sources import folder_dataset

    folder = tmp / "train"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for c in CHANNELS:
        cv2.imwrite(str(folder / f"a_{c}.jpg"), rng.integers(0, 255, (32, 32, 3), np.uint8))
    path = folder / "a_red.jpg"
    path.write_bytes(path.read_bytes()[:-200])
    return _iterate(folder_dataset(folder, ids=["a"], layout="hpav18", labelled=False))


def pipeline_empty_file(tmp):
    from hpa_zoo.data.sources import folder_dataset

    csv = _kaggle(tmp)
    (tmp / "train" / "a_red.png").write_bytes(b"")
    return _iterate(folder_dataset(tmp / "train", csv))


def pipeline_colour_png_in_kaggle_layout(tmp):
    from hpa_zoo.data.sources import folder_dataset

    csv = _kaggle(tmp)
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 1] = 200  # decoding it as 1 channel would silently give luma 118
    cv2.imwrite(str(tmp / "train" / "b_green.png"), rgb)
    return _iterate(folder_dataset(tmp / "train", csv))


def pipeline_16bit_png(tmp):
    from hpa_zoo.data.sources import folder_dataset

    csv = _kaggle(tmp)
    cv2.imwrite(str(tmp / "train" / "a_blue.png"), np.full((16, 16), 3000, np.uint16))
    return _iterate(folder_dataset(tmp / "train", csv))


def pipeline_tiff_file(tmp):
    from hpa_zoo.data.sources import folder_dataset

    csv = _kaggle(tmp)
    (tmp / "train" / "b_red.png").unlink()
    cv2.imwrite(str(tmp / "train" / "b_red.tif"), np.full((16, 16), 9, np.uint8))
    return _iterate(folder_dataset(tmp / "train", csv))


def pipeline_grey_saved_as_rgb(tmp):
    from hpa_zoo.data.sources import folder_dataset

    csv = _kaggle(tmp)
    cv2.imwrite(str(tmp / "train" / "b_green.png"), np.full((16, 16, 3), 77, np.uint8))  # 3 equal planes
    rows = _iterate(folder_dataset(tmp / "train", csv))
    assert rows[1]["image"].shape == (16, 16, 4) and (rows[1]["image"][..., 1] == 77).all()


def tfds_build_corrupt_png(tmp):
    import tfds_hpa

    _kaggle(tmp / "manual")
    _sample(tmp / "manual" / "test", "t")
    _csv(tmp / "manual" / "sample_submission.csv", "Id,Predicted\nt,0\n")
    (tmp / "manual" / "train" / "b_red.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    return tfds_hpa.build("hpa_kaggle", manual_dir=tmp / "manual", data_dir=tmp / "tfds", config="128")


# CSVs ------------------------------------------------------------------------------------------
def _labels(path):
    from hpa_zoo.data.labels import read_labels_csv

    return read_labels_csv(path)


def csv_missing_column(tmp):
    return _labels(_csv(tmp / "train.csv", "Id,Labels\na,0\n"))


def csv_malformed_target(tmp):
    return _labels(_csv(tmp / "train.csv", "Id,Target\na,0\nb,1 two\n"))


def csv_empty_target(tmp):
    return _labels(_csv(tmp / "train.csv", "Id,Target\na,\n"))


def csv_class_out_of_range(tmp):
    return _labels(_csv(tmp / "train.csv", "Id,Target\na,0\nb,5 28\n"))


def csv_negative_class(tmp):
    return _labels(_csv(tmp / "train.csv", "Id,Target\na,-1\n"))


def csv_duplicate_ids(tmp):
    return _labels(_csv(tmp / "train.csv", "Id,Target\na,0\nb,1\na,2\n"))


def csv_ids_without_images(tmp):
    from hpa_zoo.data.sources import folder_dataset

    csv = _kaggle(tmp, "Id,Target\na,0\nb,1\nghost,3\n")
    return folder_dataset(tmp / "train", csv)


def csv_images_without_ids(tmp):
    from hpa_zoo.data.sources import folder_dataset

    csv = _kaggle(tmp, "Id,Target\na,0\n")  # b's four files are in the folder but not in the CSV
    ids = [e["id"].decode() for e in _iterate(folder_dataset(tmp / "train", csv))]
    assert ids == ["a"]  # the CSV defines the dataset; unlisted files are ignored (as Kaggle's extra files)


def csv_byte_order_mark(tmp):
    df = _labels(_csv(tmp / "train.csv", "Id,Target\na,0\nb,1 2\n", encoding="utf-8-sig"))
    assert list(df.columns[:2]) == ["Id", "Target"] and list(df["Id"]) == ["a", "b"]
    assert list(df["labels"]) == [(0,), (1, 2)]


def csv_windows_line_endings(tmp):
    df = _labels(_csv(tmp / "train.csv", "Id,Target\na,0\nb,1 2\n", newline="\r\n"))
    assert list(df["Id"]) == ["a", "b"] and list(df["Target"]) == ["0", "1 2"]
    assert list(df["labels"]) == [(0,), (1, 2)]


def csv_bom_and_crlf_through_the_pipeline(tmp):
    from hpa_zoo.data.sources import folder_dataset

    _kaggle(tmp)
    csv = _csv(tmp / "train.csv", "Id,Target\na,0\nb,1 2\n", encoding="utf-8-sig", newline="\r\n")
    rows = _iterate(folder_dataset(tmp / "train", csv))
    assert [r["id"].decode() for r in rows] == ["a", "b"] and rows[1]["multi_hot"][[1, 2]].tolist() == [1, 1]


def csv_missing_file(tmp):
    return _labels(tmp / "nope.csv")


# configuration ---------------------------------------------------------------------------------
def unknown_model_name(tmp):
    import hpa_zoo

    return hpa_zoo.load("team1_densenet121_521")


def image_size_model_cannot_take(tmp):
    import hpa_zoo

    return hpa_zoo.load("team1_densenet121_512", input_shape=(16, 16, 4))


def input_larger_than_image(tmp):
    from hpa_zoo.recipe import load_recipe

    return load_recipe("team1_densenet121_512", image_size=64, input_size=96)


def non_positive_batch(tmp):
    from hpa_zoo.train.trainer import train

    _kaggle(tmp)
    return train("team1_densenet121_512", tmp, out_dir=tmp / "run", batch_size=0, verbose=0)


def data_folder_missing(tmp):
    from hpa_zoo.train.trainer import train

    return train("team1_densenet121_512", str(tmp / "missing_folder"), out_dir=tmp / "run", verbose=0)


def non_positive_epochs(tmp):
    from hpa_zoo.train.trainer import train

    _kaggle(tmp)
    return train("team1_densenet121_512", tmp, out_dir=tmp / "run", epochs=-2, verbose=0)


def unknown_precision(tmp):
    from hpa_zoo.train.trainer import train

    return train("team1_densenet121_512", tmp, out_dir=tmp / "run", precision="fp8", verbose=0)


def unknown_strategy(tmp):
    from hpa_zoo.train.distribute import make_strategy

    return make_strategy("horovod")


def data_neither_folder_nor_tfds(tmp):
    from hpa_zoo.train.trainer import train

    return train("team1_densenet121_512", "my_data", out_dir=tmp / "run", verbose=0)


# weights ---------------------------------------------------------------------------------------
@pytest.fixture
def tiny_row():
    from hpa_zoo import registry
    from tests.test_training import TINY

    registry.get_spec("team1_densenet121_512")
    registry.register(registry.ModelSpec(name=TINY, team="test", builder="tests.test_training:build_tiny",
                                         input_size=32, classifier="logits"))
    yield TINY
    registry.unregister(TINY)


def weights_of_another_model(tmp):
    import keras

    import hpa_zoo

    other = keras.Sequential([keras.Input((32, 32, 4)), keras.layers.Flatten(), keras.layers.Dense(28)])
    path = tmp / "other.weights.h5"
    other.save_weights(path)
    return hpa_zoo.load("tiny_test_cnn", weights=str(path), input_shape=(32, 32, 4))


def weights_shape_mismatch(tmp):
    import hpa_zoo
    from tests.test_training import build_tiny

    path = tmp / "three_classes.weights.h5"
    build_tiny(num_classes=3, input_shape=(32, 32, 4)).save_weights(path)
    return hpa_zoo.load("tiny_test_cnn", weights=str(path), input_shape=(32, 32, 4))


def weights_file_missing(tmp):
    import hpa_zoo

    return hpa_zoo.load("tiny_test_cnn", weights=str(tmp / "missing.weights.h5"), input_shape=(32, 32, 4))


def weights_wrong_hash(tmp):
    from hpa_zoo.registry import WeightsSpec
    from hpa_zoo.zoo.weights import fetch

    os.environ["HPA_ZOO_CACHE"] = str(tmp / "cache")
    path = tmp / "download.onnx"
    path.write_bytes(b"not the published file")
    spec = WeightsSpec(name="hpa", urls=(), sha256="ab" * 32, format="onnx", filename="x.onnx")
    return fetch(spec, local_path=path)


def weights_unknown_set(tmp):
    import hpa_zoo

    return hpa_zoo.load("team1_densenet121_512", weights="kaggle_2019")


# ids are names, never paths (hpa_zoo.safepaths) ---------------------------------------------------
def _escape_target(tmp):
    """A complete image outside the image folder that an escaping id would point at."""
    _sample(tmp / "other", "a")
    return tmp / "other"


def path_id_parent(tmp):
    _escape_target(tmp)
    _sample(tmp / "train", "b")
    from hpa_zoo.data.sources import folder_dataset

    return _iterate(folder_dataset(tmp / "train", _csv(tmp / "train.csv", "Id,Target\nb,0\n../other/a,1\n")))


def path_id_absolute(tmp):
    other = _escape_target(tmp)
    _sample(tmp / "train", "b")
    from hpa_zoo.data.sources import folder_dataset

    return _iterate(folder_dataset(tmp / "train", _csv(tmp / "train.csv", f"Id,Target\n{other / 'a'},1\n")))


def path_id_backslash(tmp):
    return _labels(_csv(tmp / "train.csv", "Id,Target\na,0\n..\\other\\a,1\n"))


def path_id_nul(tmp):
    return _labels(_csv(tmp / "train.csv", "Id,Target\na\x00b,0\n"))


def path_id_drive(tmp):
    return _labels(_csv(tmp / "train.csv", "Id,Target\nC:a,0\n"))


def path_ids_argument(tmp):
    _escape_target(tmp)
    _sample(tmp / "train", "b")
    from hpa_zoo.data.sources import folder_dataset

    return folder_dataset(tmp / "train", ids=["b", "../other/a"], labelled=False)


def path_id_load_rgby(tmp):
    _escape_target(tmp)
    from hpa_zoo.data.images import load_rgby

    return load_rgby(tmp / "train", "../other/a")


def path_id_tfds(tmp):
    import tfds_hpa

    _escape_target(tmp / "manual")
    _kaggle(tmp / "manual", rows="Id,Target\na,0\n../other/a,1\n")
    _sample(tmp / "manual" / "test", "t")
    _csv(tmp / "manual" / "sample_submission.csv", "Id,Predicted\nt,0\n")
    return tfds_hpa.build("hpa_kaggle", manual_dir=tmp / "manual", data_dir=tmp / "tfds", config="128")


def path_id_folds(tmp):
    from hpa_zoo.data.folds import folds_for_folders

    _escape_target(tmp)
    _kaggle(tmp, rows="Id,Target\na,0\n../other/a,1\n")
    return folds_for_folders(tmp)


def path_id_predict_test(tmp):
    from hpa_zoo.infer.predict import _test_source

    _escape_target(tmp)
    _sample(tmp / "test", "t")
    _csv(tmp / "sample_submission.csv", "Id,Predicted\nt,0\n../other/a,0\n")
    return _test_source(tmp, data_dir=None, image_size=16)


def _multichannel(path: Path, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 4), 30, np.uint8))
    return path


def _finetune_table(tmp, name):
    from hpa_zoo.data.user_images import read_image, read_table

    table, _ = read_table(_csv(tmp / "data.csv", f"filename,labels\n{name},x\n"), n_channels=4)
    return read_image(tmp / "images", table["files"][0], 4, 16, where="data.csv, line 2: ")


def path_finetune_parent(tmp):
    _multichannel(tmp / "secret.png")
    return _finetune_table(tmp, "../secret.png")


def path_finetune_absolute(tmp):
    return _finetune_table(tmp, _multichannel(tmp / "secret.png"))


def path_finetune_symlink_outside(tmp):
    (tmp / "images").mkdir()
    (tmp / "images" / "link.png").symlink_to(_multichannel(tmp / "secret.png"))
    return _finetune_table(tmp, "link.png")


def path_finetune_subfolder(tmp):
    _multichannel(tmp / "images" / "plate1" / "a.png")
    (tmp / "images" / "inside.png").symlink_to(tmp / "images" / "plate1" / "a.png")
    assert _finetune_table(tmp, "plate1/a.png").shape == (16, 16, 4)
    assert _finetune_table(tmp, "inside.png").shape == (16, 16, 4)  # a symlink that stays inside is fine


def _predict_csv_item(tmp, rows: str):
    from hpa_zoo.data.user_images import discover, read_item

    (tmp / "images").mkdir(exist_ok=True)
    items, _ = discover(_csv(tmp / "images" / "list.csv", rows), stains=("red", "green", "blue", "yellow"))
    return read_item(items[0], 4, 16)


def path_predict_csv_parent(tmp):
    _multichannel(tmp / "secret.png")
    return _predict_csv_item(tmp, "filename\n../secret.png\n")


def path_predict_csv_symlink(tmp):
    (tmp / "images").mkdir()
    (tmp / "images" / "link.png").symlink_to(_multichannel(tmp / "secret.png"))
    return _predict_csv_item(tmp, "filename\nlink.png\n")


# argument sanity: counts and sizes that cannot work, refused before any work ----------------------------
def synth_no_train_images(tmp):
    from hpa_zoo.data.synthetic import write_synthetic_dataset

    try:
        return write_synthetic_dataset(tmp / "syn", n_train=0, n_test=0, size=32, workers=0, progress=False)
    finally:
        assert not (tmp / "syn").exists()


def synth_negative_workers(tmp):
    from hpa_zoo.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp / "syn", n_train=2, n_test=0, size=32, workers=-1, progress=False)


def folds_one_split(tmp):
    from hpa_zoo.data.folds import folds_for_folders

    _kaggle(tmp)
    return folds_for_folders(tmp, n_splits=1)


def folds_zero_workers(tmp):
    from hpa_zoo.data.folds import folds_for_folders

    _kaggle(tmp)
    return folds_for_folders(tmp, workers=0)


def train_zero_steps(tmp):
    from hpa_zoo.train.trainer import train

    _kaggle(tmp)
    return train("team1_densenet121_512", tmp, out_dir=tmp / "run", steps_per_epoch=0, verbose=0)


def train_negative_fold(tmp):
    from hpa_zoo.train.trainer import train

    _kaggle(tmp)
    return train("team1_densenet121_512", tmp, out_dir=tmp / "run", fold=-1, verbose=0)


def predict_zero_batch(tmp):
    from hpa_zoo.infer.predict import predict

    return predict(tmp / "preset", tmp, out_dir=tmp / "out", batch_size=0, verbose=0)


def predict_images_zero_batch(tmp):
    from hpa_zoo.infer.predict_images import predict_images

    return predict_images(tmp / "preset", tmp, out_dir=tmp / "out", batch_size=0, verbose=0)


def _finetune(tmp, **kw):
    from hpa_zoo.train.finetune import finetune

    return finetune("team1_densenet121_512", tmp / "data.csv", tmp, out_dir=tmp / "ft", verbose=0, **kw)


def finetune_zero_image_size(tmp):
    return _finetune(tmp, image_size=0)


def finetune_val_fraction_one(tmp):
    return _finetune(tmp, val_fraction=1.0)


def finetune_negative_lr(tmp):
    return _finetune(tmp, learning_rate=-1e-3)


def compare_teams_zero_size(tmp):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.compare_teams import compare

    try:
        return compare(tmp / "cmp", budget="micro", size=0)
    finally:
        assert not (tmp / "cmp").exists()


def download_zero_timeout(tmp):
    from hpa_zoo.registry import WeightsSpec
    from hpa_zoo.zoo.weights import fetch

    return fetch(WeightsSpec(name="hpa", urls=("http://127.0.0.1:9/x",), sha256="ab" * 32, format="onnx",
                             filename="x.onnx"), timeout=0)


# TFDS builds with empty splits -------------------------------------------------------------------------
def _kaggle_manual(tmp, train_rows="Id,Target\na,0\nb,1 2\n", test_rows="Id,Predicted\n"):
    _kaggle(tmp / "manual", rows=train_rows)
    (tmp / "manual" / "test").mkdir(exist_ok=True)
    _csv(tmp / "manual" / "sample_submission.csv", test_rows)
    return tmp / "manual"


def tfds_header_only_submission(tmp):
    import tfds_hpa

    builder = tfds_hpa.build("hpa_kaggle", manual_dir=_kaggle_manual(tmp), data_dir=tmp / "tfds", config="128")
    assert list(builder.info.splits) == ["train"] and builder.info.splits["train"].num_examples == 2


def tfds_no_test_split(tmp):
    import tfds_hpa
    from hpa_zoo.data.sources import tfds_dataset

    tfds_hpa.build("hpa_kaggle", manual_dir=_kaggle_manual(tmp), data_dir=tmp / "tfds", config="128")
    return tfds_dataset("hpa_kaggle/128", "test", data_dir=tmp / "tfds")


def tfds_header_only_train(tmp):
    import tfds_hpa

    return tfds_hpa.build("hpa_kaggle", manual_dir=_kaggle_manual(tmp, train_rows="Id,Target\n"),
                          data_dir=tmp / "tfds", config="128")


def tfds_every_row_skipped(tmp):
    import tfds_hpa

    manual = _kaggle_manual(tmp, train_rows="Id,Target\nghost,0\n")
    return tfds_hpa.build("hpa_kaggle", manual_dir=manual, data_dir=tmp / "tfds", config="128", on_error="skip")


# ---------------------------------------------------------------------------------------------- the table
# name: (function, expected exception or OK, regex over the message: names the file/row/value + the fix)
CATALOGUE = {
    # images
    "image/corrupt_png": (corrupt_png, HpaDataError, r"a_green\.png: cannot be decoded .*re-download"),
    "image/truncated_png": (truncated_png, HpaDataError, r"a_blue\.png: cannot be decoded .*truncated.*re-download"),
    "image/corrupt_tiff": (corrupt_tiff, HpaDataError, r"a_red\.tif: cannot be decoded .*re-download"),
    "image/corrupt_jpeg_hpav18": (corrupt_jpeg_hpav18, HpaDataError, r"a_yellow\.jpg: cannot be decoded .*re-download"),
    "image/wrong_channel_count": (colour_png_in_kaggle_layout, HpaDataError,
                                  r"a_green\.png: has 3 colour planes but a single-stain grayscale .*'hpav18' reader"),
    "image/channel_sizes_differ": (channel_sizes_differ, HpaDataError,
                                   r"image 'a' have different sizes \(.*yellow 16x20\); all four stains must"),
    "image/16bit_where_8bit": (sixteen_bit_where_8_expected, HpaDataError,
                               r"a_red\.png: is 16-bit but 8-bit was expected; convert it .*16-bit input"),
    "image/8bit_where_16bit": (eight_bit_where_16_expected, HpaDataError,
                               r"a_red\.tif: is 8-bit but 16-bit was expected; .*expect_dtype='any'"),
    "image/16bit_tiff_allowed": (sixteen_bit_tiff_when_allowed, OK, ""),
    "image/empty_file": (empty_file, HpaDataError, r"a_red\.png: the file is empty \(0 bytes\); re-download"),
    "image/missing_channel": (missing_channel_file, HpaDataError, r"missing yellow channel of image 'a'.*four files"),
    "image/all_zero_is_valid": (all_zero_image, OK, ""),
    # inside the tf.data graph only TF errors exist: InvalidArgumentError, with the file/id and the fix
    "pipeline/channel_sizes_differ": (pipeline_channel_sizes_differ, tf.errors.InvalidArgumentError,
                                      r"the blue channel has another size than red; all four stains .*\[b\]"),
    "pipeline/corrupt_png": (pipeline_corrupt_png, tf.errors.InvalidArgumentError,
                             r"b_green\.png\] \[cannot be decoded as an image .*re-download it"),
    "pipeline/truncated_png": (pipeline_truncated_png, tf.errors.InvalidArgumentError,
                               r"b_yellow\.png\] \[is truncated or corrupt \(no PNG IEND chunk at its end\); re-download it"),
    "pipeline/truncated_jpeg_hpav18": (pipeline_truncated_jpeg_hpav18, tf.errors.InvalidArgumentError,
                                       r"a_red\.jpg\] \[is truncated or corrupt \(no JPEG end marker .*re-download it"),
    "pipeline/empty_file": (pipeline_empty_file, tf.errors.InvalidArgumentError,
                            r"a_red\.png\] \[cannot be decoded as an image .*re-download it"),
    "pipeline/wrong_channel_count": (pipeline_colour_png_in_kaggle_layout, tf.errors.InvalidArgumentError,
                                     r"b_green\.png\] \[has\] \[3\] \[colour planes but a single-stain grayscale .*use layout="),
    "pipeline/16bit_png": (pipeline_16bit_png, tf.errors.InvalidArgumentError,
                           r"a_blue\.png\] \[is 16-bit but 8-bit was expected; convert it to 8 bits"),
    "pipeline/tiff_file": (pipeline_tiff_file, tf.errors.InvalidArgumentError,
                           r"b_red\.tif\] \[is a TIFF, which tf\.data cannot decode; build a TFDS dataset .*hpa-zoo prepare"),
    "pipeline/grey_saved_as_rgb": (pipeline_grey_saved_as_rgb, OK, ""),
    "tfds/corrupt_png": (tfds_build_corrupt_png, HpaDataError, r"b_red\.png: cannot be decoded .*re-download"),
    "tfds/header_only_submission": (tfds_header_only_submission, OK, ""),
    "tfds/no_test_split": (tfds_no_test_split, HpaDataError,
                           r"Unknown split 'test'.*header-only sample_submission\.csv has no test split; list"),
    "tfds/header_only_train": (tfds_header_only_train, HpaDataError,
                               r"train\.csv: has a header but no rows; a TFDS build needs at least one"),
    "tfds/every_row_skipped": (tfds_every_row_skipped, HpaDataError,
                               r"No examples were yielded.*Every row of that split was left out \(skipped 1.*ghost"),
    # CSVs
    "csv/missing_column": (csv_missing_column, HpaDataError,
                           r"train\.csv: missing column\(s\) \['Target'\]; found \['Id', 'Labels'\]; the header must"),
    "csv/malformed_target": (csv_malformed_target, HpaDataError,
                             r"train\.csv line 3 \(Id b\): Target '1 two' has 'two', which is not an integer class id; write"),
    "csv/empty_target": (csv_empty_target, HpaDataError, r"train\.csv line 2 \(Id a\): Target is empty; give at least"),
    "csv/class_out_of_range": (csv_class_out_of_range, HpaDataError,
                               r"train\.csv line 3 \(Id b\): .*class id 28, outside 0\.\.27"),
    "csv/negative_class": (csv_negative_class, HpaDataError, r"train\.csv line 2 \(Id a\): .*-1.*0\.\.27"),
    "csv/duplicate_ids": (csv_duplicate_ids, HpaDataError,
                          r"train\.csv line 4 \(Id a\): duplicate Id 'a', first seen on line 2; remove one"),
    "csv/ids_without_images": (csv_ids_without_images, HpaDataError,
                               r"missing red channel of image 'ghost'.*four files"),
    "csv/images_without_ids_ignored": (csv_images_without_ids, OK, ""),
    "csv/byte_order_mark": (csv_byte_order_mark, OK, ""),
    "csv/windows_line_endings": (csv_windows_line_endings, OK, ""),
    "csv/bom_crlf_pipeline": (csv_bom_and_crlf_through_the_pipeline, OK, ""),
    "csv/missing_file": (csv_missing_file, HpaDataError, r"nope\.csv: label CSV not found; expected .*'Id,Target'"),
    # ids are names, never paths
    "paths/id_parent_folder": (path_id_parent, HpaDataError, r"train\.csv line 3 \(Id \.\./other/a\): Id '\.\./other/a' "
                                                             r"contains a path separator.*fix the Id or remove"),
    "paths/id_absolute": (path_id_absolute, HpaDataError,
                          r"train\.csv line 2 \(Id /.*\): Id '/.*' contains a path separator.*outside the image folder"),
    "paths/id_backslash": (path_id_backslash, HpaDataError, r"train\.csv line 3 .*contains a path separator"),
    "paths/id_nul": (path_id_nul, HpaDataError, r"train\.csv line 2 .*contains a NUL character.*fix the Id"),
    "paths/id_drive_prefix": (path_id_drive, HpaDataError, r"train\.csv line 2 \(Id C:a\): .*drive prefix.*fix the Id"),
    "paths/ids_argument": (path_ids_argument, HpaDataError,
                           r"folder_dataset\(ids=\.\.\.\) item 1: Id '\.\./other/a' contains a path"),
    "paths/id_load_rgby": (path_id_load_rgby, HpaDataError, r"train: Id '\.\./other/a' contains a path separator"),
    "paths/id_tfds_build": (path_id_tfds, HpaDataError, r"train\.csv line 3 \(Id \.\./other/a\): .*path separator"),
    "paths/id_folds": (path_id_folds, HpaDataError, r"train\.csv line 3 \(Id \.\./other/a\): .*path separator"),
    "paths/id_predict_test": (path_id_predict_test, HpaDataError,
                              r"sample_submission\.csv line 3 \(Id \.\./other/a\): .*path separator"),
    "paths/finetune_parent": (path_finetune_parent, HpaDataError,
                              r"data\.csv, line 2, filename: file name '\.\./secret\.png' has a '\.\.' part.*--images-dir"),
    "paths/finetune_absolute": (path_finetune_absolute, HpaDataError,
                                r"data\.csv, line 2, filename: file name '/.*secret\.png' is an absolute path; give a path relative"),
    "paths/finetune_symlink_outside": (path_finetune_symlink_outside, HpaDataError,
                                       r"data\.csv, line 2: .*link\.png resolves to .*secret\.png, outside the image folder.*--images-dir"),
    "paths/finetune_subfolder": (path_finetune_subfolder, OK, ""),
    "paths/predict_csv_parent": (path_predict_csv_parent, HpaDataError,
                                 r"list\.csv, line 2, filename: file name '\.\./secret\.png' has a '\.\.' part"),
    "paths/predict_csv_symlink": (path_predict_csv_symlink, HpaDataError,
                                  r"image 'link': .*link\.png resolves to .*outside the image folder"),
    # configuration
    "config/unknown_model": (unknown_model_name, UnknownModelError,
                             r"unknown model name 'team1_densenet121_521'\. Did you mean 'team1_densenet121_512'"),
    "config/image_size_too_small": (image_size_model_cannot_take, ConfigError,
                                    r"input_shape \(16, 16, 4\): DenseNet121 needs H, W >= 32"),
    "config/input_larger_than_image": (input_larger_than_image, ConfigError,
                                       r"input_size 96 > image_size 64.*choose input_size <= image_size"),
    "config/non_positive_batch": (non_positive_batch, ConfigError, r"batch_size=0: must be a positive integer"),
    "config/non_positive_epochs": (non_positive_epochs, ConfigError, r"epochs=-2: must be a positive integer"),
    "config/unknown_precision": (unknown_precision, ConfigError, r"precision='fp8': use one of"),
    "config/unknown_strategy": (unknown_strategy, ConfigError, r"strategy='horovod': use one of default, mirrored"),
    "config/data_folder_missing": (data_folder_missing, HpaDataError,
                                   r"data '.*missing_folder': no such folder; pass a Kaggle-layout folder"),
    "config/data_not_found": (data_neither_folder_nor_tfds, HpaDataError,
                              r"data 'my_data' is neither a folder nor a TFDS name; pass a Kaggle-layout folder"),
    "config/synth_no_train_images": (synth_no_train_images, ConfigError,
                                     r"n_train=0, n_test=0: a dataset needs n_train >= 1 .*--n-train"),
    "config/synth_negative_workers": (synth_negative_workers, ConfigError, r"workers=-1: use None \(all CPUs\)"),
    "config/folds_one_split": (folds_one_split, ConfigError, r"n_splits=1: must be an integer >= 2 .*--n-splits"),
    "config/folds_zero_workers": (folds_zero_workers, ConfigError, r"workers=0: must be a positive integer"),
    "config/train_zero_steps": (train_zero_steps, ConfigError,
                                r"steps_per_epoch=0: must be a positive integer \(CLI: --steps-per-epoch\)"),
    "config/train_negative_fold": (train_negative_fold, ConfigError, r"fold=-1: must be an integer >= 0"),
    "config/predict_zero_batch": (predict_zero_batch, ConfigError, r"batch_size=0: must be a positive integer"),
    "config/predict_images_zero_batch": (predict_images_zero_batch, ConfigError, r"batch_size=0, workers=4: both"),
    "config/finetune_zero_image_size": (finetune_zero_image_size, ConfigError,
                                        r"image_size=0: must be a positive integer \(CLI: --image-size\)"),
    "config/finetune_val_fraction_one": (finetune_val_fraction_one, ConfigError,
                                         r"val_fraction=1\.0: must be a fraction strictly between 0 and 1"),
    "config/finetune_negative_lr": (finetune_negative_lr, ConfigError, r"learning_rate=-0\.001: must be a positive"),
    "config/compare_teams_zero_size": (compare_teams_zero_size, ConfigError, r"size=0: must be a positive integer"),
    "config/download_zero_timeout": (download_zero_timeout, ConfigError, r"timeout=0: must be a positive number"),
    # weights
    "weights/another_model": (weights_of_another_model, WeightsError,
                              r"other\.weights\.h5: does not match model 'tiny_test_cnn'.*saved from another model.*load it with"),
    "weights/shape_mismatch": (weights_shape_mismatch, WeightsError,
                               r"three_classes\.weights\.h5: does not match model 'tiny_test_cnn' with num_classes=28.*shape.*class count"),
    "weights/file_missing": (weights_file_missing, WeightsError, r"missing\.weights\.h5' does not exist; pass the \.weights\.h5"),
    "weights/wrong_hash": (weights_wrong_hash, WeightsError, r"download\.onnx.*sha256.*abab"),
    "weights/unknown_set": (weights_unknown_set, WeightsError,
                            r"model 'team1_densenet121_512' has no weights 'kaggle_2019'; use None, 'imagenet'"),
}


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_bad_input_catalogue(case, tmp_path, tiny_row, monkeypatch):
    monkeypatch.setenv("HPA_ZOO_CACHE", str(tmp_path / "cache"))
    func, expected, pattern = CATALOGUE[case]
    if expected is OK:
        func(tmp_path)
        return
    with pytest.raises(expected) as info:
        func(tmp_path)
    assert re.search(pattern, str(info.value), flags=re.S), f"{case}: message does not match {pattern!r}:\n{info.value}"


def test_catalogue_is_documented():
    """docs/BAD_INPUT.md has a row for every case (and no stale ones)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "BAD_INPUT.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_]+/[a-z0-9_]+)` \|", doc, flags=re.M))
    assert documented == set(CATALOGUE)
