"""The RGB+Y JPEG storage (`hpa_zoo.data.rgby_jpeg`) on the real HPA fields, and Team 1's undecoded train path.

References: the fields' PNGs read independently with PIL (NumPy errors against them), the whole-image decode
sliced with NumPy (for the crop-window decode), and Team 1's train_map on the decoded image (for the undecoded
path).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from hpa_zoo.constants import CHANNELS
from hpa_zoo.data import rgby_jpeg
from hpa_zoo.errors import HpaDataError


def _real_fields(folder):
    """{id: (512, 512, 4) uint8 R, G, B, Y} of the three real fields, read with PIL."""
    ids = list(pd.read_csv(folder / "labels.csv")["Id"])
    return {i: np.stack([np.asarray(Image.open(folder / f"{i}_{c}.png")) for c in CHANNELS], -1) for i in ids}


@pytest.fixture(scope="module")
def fields(real_samples_dir):
    return _real_fields(real_samples_dir)


def test_round_trip_error_on_real_fields_is_within_the_documented_bound(fields):
    for image_id, image in fields.items():
        parts = rgby_jpeg.encode_rgby_jpeg(image)
        got = rgby_jpeg.decode_rgby_jpeg(tf.constant(parts)).numpy()
        assert got.shape == image.shape and got.dtype == np.uint8
        err = np.abs(got.astype(np.int16) - image.astype(np.int16))
        assert err.mean() <= rgby_jpeg.MEAN_ABS_ERROR_BOUND, (image_id, err.mean())
        assert err.max() <= rgby_jpeg.MAX_ABS_ERROR_BOUND, (image_id, err.max())
        for k in range(4):  # every channel stays itself (a swapped or blurred-together stain would not)
            assert np.corrcoef(got[..., k].ravel(), image[..., k].ravel())[0, 1] > 0.99, (image_id, CHANNELS[k])
        png = Image.fromarray(image).tobytes()  # raw size; the stored pair is far smaller
        assert sum(len(p) for p in parts) < len(png) / 2


def test_4_2_0_chroma_subsampling_would_break_the_bound(fields):
    """Why 4:4:4: OpenCV's default subsampling blurs the R, G, B stains into each other (the bound then fails)."""
    import cv2

    image = next(iter(fields.values()))
    rgb = cv2.imencode(".jpg", image[..., [2, 1, 0]], [cv2.IMWRITE_JPEG_QUALITY, rgby_jpeg.JPEG_QUALITY])[1]
    y = rgby_jpeg.encode_rgby_jpeg(image)[1]
    got = rgby_jpeg.decode_rgby_jpeg(tf.constant([rgb.tobytes(), y])).numpy()
    assert np.abs(got.astype(np.int16) - image).max() > rgby_jpeg.MAX_ABS_ERROR_BOUND


def test_window_decode_equals_the_whole_decode_sliced(fields):
    parts = tf.constant(rgby_jpeg.encode_rgby_jpeg(next(iter(fields.values()))))
    whole = rgby_jpeg.decode_rgby_jpeg(parts).numpy()
    np.testing.assert_array_equal(rgby_jpeg.stored_shape(parts).numpy(), [512, 512])
    for top, left, side in [(0, 0, 512), (5, 17, 300), (211, 3, 301), (100, 200, 129)]:
        window = tuple(tf.constant(v, tf.int32) for v in (top, left, side))
        np.testing.assert_array_equal(rgby_jpeg.decode_rgby_jpeg(parts, window).numpy(),
                                      whole[top:top + side, left:left + side], err_msg=str((top, left, side)))


def test_decoded_turns_the_stored_pair_into_image():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    parts = tf.constant(rgby_jpeg.encode_rgby_jpeg(image))
    out = rgby_jpeg.decoded({"id": tf.constant("a"), rgby_jpeg.ENCODED_KEY: parts})
    assert set(out) == {"id", "image"}
    np.testing.assert_array_equal(out["image"].numpy(), rgby_jpeg.decode_rgby_jpeg(parts).numpy())
    plain = {"image": tf.constant(image)}
    assert rgby_jpeg.decoded(plain) is plain


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 4), np.uint16), np.zeros((8, 8))])
def test_encode_rejects_what_is_not_rgby_uint8(bad):
    with pytest.raises(HpaDataError, match=r"needs \(H, W, 4\) uint8"):
        rgby_jpeg.encode_rgby_jpeg(bad)


def test_team1_train_map_on_the_stored_pair_equals_the_decoded_path(fields):
    """Team 1's undecoded path (crop window decoded only) = its path on the decoded image, seed for seed; and
    within the storage's bound of the path on the original PNG pixels."""
    import cv2

    from zoo_models.teams import team1_bestfitting as t1

    size, crop = 192, 128
    image = cv2.resize(next(iter(fields.values())), (size, size), interpolation=cv2.INTER_AREA)
    parts = tf.constant(rgby_jpeg.encode_rgby_jpeg(image))
    hot = tf.one_hot(3, 28, dtype=tf.uint8)
    decoded = rgby_jpeg.decode_rgby_jpeg(parts)
    for s in range(6):
        seed = tf.constant([s, 7], tf.int64)
        got, labels = t1.train_map({rgby_jpeg.ENCODED_KEY: parts, "multi_hot": hot}, seed, image_size=size,
                                   input_size=crop)
        want, _ = t1.train_map({"image": decoded, "multi_hot": hot}, seed, image_size=size, input_size=crop)
        lossless, _ = t1.train_map({"image": tf.constant(image), "multi_hot": hot}, seed, image_size=size,
                                   input_size=crop)
        assert got.shape == (crop, crop, 4) and got.dtype == tf.float32
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=f"seed {s}")
        assert np.abs(got.numpy() - lossless.numpy()).mean() <= rgby_jpeg.MEAN_ABS_ERROR_BOUND
        np.testing.assert_array_equal(labels.numpy(), hot.numpy().astype(np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be 256 px square"):
        t1.train_map({rgby_jpeg.ENCODED_KEY: parts, "multi_hot": hot}, tf.constant([0, 1], tf.int64),
                     image_size=256, input_size=crop)
    assert t1.make_recipe("team1_densenet121_1024").train_map_reads_jpeg
