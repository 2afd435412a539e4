"""hpa_zoo.augment.device and ``train(..., augment_on="device")``: Team 1's crop + resize + D4 in the training step.

References are independent of the layer: ``tf.image.resize`` of the crop window (the host path's resize), NumPy's
flips / rot90 for the dihedral group, the decoded source pixels for the host map, and h5py for the weight files.
"""
from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from tests.test_training import RECIPE_PATCH, SIZE, synthetic_data, tiny_model  # noqa: F401  (fixtures)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _d4_numpy(image):
    """The 8 dihedral images of a (H, W, C) array: rot90 by 0..3 of the image and of its mirror."""
    return [np.rot90(m, k, axes=(0, 1)) for m in (image, image[:, ::-1]) for k in range(4)]


# ---------------------------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("u_crop", [(0.0, 0.0, 0.0), (0.5, 0.5, 0.99), (0.99, 0.2, 0.7), (0.3, 0.99, 0.0)])
def test_crop_and_resize_equal_tf_image_resize_of_the_same_window(u_crop):
    import tensorflow as tf

    from hpa_zoo.augment.device import random_scale_crop

    rng = np.random.default_rng(1)
    s, size = 13, 8
    images = rng.uniform(0, 255, (2, s, s, 4)).astype(np.float32)
    u = np.array([u_crop, u_crop[::-1]], np.float32)
    got = _np(random_scale_crop(images, size, u))
    assert got.shape == (2, size, size, 4)
    for b in range(2):
        side = size + int(np.floor(u[b, 0] * (s - size + 1)))
        left, top = (int(np.floor(v * (s - side + 1))) for v in u[b, 1:])
        assert size <= side <= s and left + side <= s and top + side <= s
        window = images[b, top:top + side, left:left + side]
        want = tf.image.resize(window, (size, size), method="bilinear").numpy()
        np.testing.assert_allclose(got[b], want, atol=2e-3)


def test_crop_side_covers_every_integer_from_input_to_image_size():
    from hpa_zoo.augment.device import random_scale_crop

    s, size = 11, 8
    # a ramp image: the resized crop's first and last row centres tell its side
    images = np.broadcast_to(np.arange(s, dtype=np.float32)[None, :, None, None], (1, s, s, 1))
    sides = set()
    for u0 in np.linspace(0, 0.999, 40):
        out = _np(random_scale_crop(images, size, np.array([[u0, 0, 0]], np.float32)))[0, :, 0, 0]
        scale = (out[-1] - out[0]) / (size - 1)  # = side / size
        sides.add(int(round(scale * size)))
    assert sides == set(range(size, s + 1))


def test_device_drawn_crops_scale_per_image_and_d4_draws_all_eight():
    from hpa_zoo.augment.device import random_d4, random_scale_crop

    gen = keras.random.SeedGenerator(0)
    # a horizontal ramp I(y, x) = x: crop + bilinear resize gives o(x) = scale * x + offset with 1 <= scale <= 96/64
    ramp = np.broadcast_to(np.arange(96, dtype="float32")[None, None, :, None], (4, 96, 96, 1))
    crops = keras.ops.convert_to_numpy(random_scale_crop(ramp, 64, keras.random.uniform((4, 3), seed=gen)))
    assert crops.shape == (4, 64, 64, 1)
    slopes = np.diff(crops[:, 10, 5:60, 0], axis=1)
    assert np.allclose(slopes, slopes[:, :1], atol=1e-3)  # linear: one scale per image
    assert np.all(slopes[:, 0] >= 1 - 1e-4) and np.all(slopes[:, 0] <= 1.5 + 1e-4)
    assert np.all(crops[:, :, :, 0].min(axis=(1, 2)) >= 0) and np.all(crops.max(axis=(1, 2, 3)) <= 95 + 1e-3)
    assert len(np.unique(np.round(slopes[:, 0], 4))) > 1  # the scale is drawn per image

    images = np.random.default_rng(0).random((64, 8, 8, 3)).astype("float32")
    out = keras.ops.convert_to_numpy(random_d4(images, keras.random.uniform((64, 3), seed=gen)))
    seen = set()
    for x, y in zip(images, out):
        candidates = [np.rot90(x, r) for r in range(4)] + [np.rot90(x[::-1], r) for r in range(4)]
        matches = [k for k, c in enumerate(candidates) if np.array_equal(c, y)]
        assert matches, "output is not a dihedral transform of the input"
        seen.add(matches[0])
    assert len(seen) >= 6  # all 8 are drawn; 64 draws miss >= 3 of them with probability < 1e-5


def test_d4_coins_give_each_of_the_eight_transforms():
    from hpa_zoo.augment.device import RandomScaleCropD4

    image = np.arange(5 * 5 * 2, dtype=np.uint8).reshape(5, 5, 2)
    layer = RandomScaleCropD4(5)  # crop side = image side: the crop is the identity, only D4 acts
    coins = list(itertools.product((0.25, 0.75), repeat=3))
    u = np.array([[0.0, 0.0, 0.0, *c] for c in coins], np.float32)
    out = _np(layer({"image": np.stack([image] * 8), "u": u}, training=True))
    assert out.dtype == np.float32
    for row, (flipud, fliplr, transpose) in zip(out, coins):
        want = image.astype(np.float32)
        want = want[::-1] if flipud < 0.5 else want
        want = want[:, ::-1] if fliplr < 0.5 else want
        want = want.transpose(1, 0, 2) if transpose < 0.5 else want
        np.testing.assert_allclose(row, want, atol=1e-4)
    got = {np.round(o).astype(np.uint8).tobytes() for o in out}
    assert got == {m.tobytes() for m in _d4_numpy(image)} and len(got) == 8


def test_training_false_is_the_identity_and_training_true_needs_draws_or_a_seed():
    """training=False: images at the layer's size pass unchanged (validation); a batch of another side is the whole
    image resized to the size (what a backend's build call sees), equal to tf.image.resize."""
    import tensorflow as tf

    from hpa_zoo.augment.device import N_DRAWS, RandomScaleCropD4
    from hpa_zoo.errors import ConfigError

    images = np.random.default_rng(0).integers(0, 256, (3, 12, 12, 4), dtype=np.uint8)
    at_size = images[:, :8, :8]
    layer = RandomScaleCropD4(8)
    for inputs in (at_size, {"image": at_size, "u": np.zeros((3, N_DRAWS), np.float32)}):
        out = layer(inputs, training=False)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        np.testing.assert_array_equal(_np(out), at_size.astype(np.float32))
    resized = _np(layer(images, training=False))
    want = tf.image.resize(images.astype(np.float32), (8, 8), method="bilinear").numpy()
    np.testing.assert_allclose(resized, want, atol=1e-3)
    with pytest.raises(ConfigError, match="seed"):
        layer(images, training=True)
    seeded = _np(RandomScaleCropD4(8, seed=3)(images, training=True))
    assert seeded.shape == (3, 8, 8, 4) and 0 <= seeded.min() and seeded.max() <= 255


def test_tta_d4_apply_is_the_layers_d4():
    from hpa_zoo.augment import device
    from hpa_zoo.infer import tta

    assert tta.d4_apply is device.d4_apply


# ---------------------------------------------------------------------------------------------- host map
def test_host_map_yields_uint8_at_image_size_with_seeded_draws(synthetic_data):  # noqa: F811
    import tensorflow as tf

    from hpa_zoo.augment.device import N_DRAWS, device_host_map
    from hpa_zoo.data import rgby_jpeg
    from hpa_zoo.data.images import load_rgby

    image = load_rgby(synthetic_data / "train", _first_id(synthetic_data))  # (64, 64, 4) uint8, independent reader
    labels = np.zeros(28, np.uint8)
    labels[3] = 1
    seed = tf.constant([4, 2], tf.int64)
    inputs, target = device_host_map({"image": image, "multi_hot": labels}, seed, image_size=SIZE)
    assert inputs["image"].dtype == tf.uint8 and tuple(inputs["image"].shape) == (SIZE, SIZE, 4)
    np.testing.assert_array_equal(inputs["image"].numpy(), image)  # decoded only: no crop, resize or flip
    u = inputs["u"].numpy()
    assert u.dtype == np.float32 and u.shape == (N_DRAWS,) and ((0 <= u) & (u < 1)).all()
    np.testing.assert_array_equal(u, tf.random.stateless_uniform([N_DRAWS], seed).numpy())
    assert target.dtype == tf.float32 and target.numpy().tolist() == labels.astype(np.float32).tolist()

    small, _ = device_host_map({"image": image[:32, :32], "multi_hot": labels}, seed, image_size=SIZE)
    assert small["image"].dtype == tf.uint8 and tuple(small["image"].shape) == (SIZE, SIZE, 4)

    parts = rgby_jpeg.encode_rgby_jpeg(image)
    stored, _ = device_host_map({rgby_jpeg.ENCODED_KEY: tf.constant(parts), "multi_hot": labels}, seed,
                                image_size=SIZE)
    np.testing.assert_array_equal(stored["image"].numpy(), rgby_jpeg.decode_rgby_jpeg(tf.constant(parts)).numpy())


def _first_id(folder) -> str:
    import pandas as pd

    return str(pd.read_csv(folder / "train.csv")["Id"].iloc[0])


def test_team1_recipes_declare_the_device_augmentation():
    from hpa_zoo.augment.device import RandomScaleCropD4
    from hpa_zoo.recipe import load_recipe

    recipe = load_recipe("team1_densenet121_1024", image_size=96, input_size=64)
    layer = recipe.device_augment.make_layer()
    assert isinstance(layer, RandomScaleCropD4) and layer.size == 64
    assert recipe.device_augment.host_map.keywords == {"image_size": 96}


# ---------------------------------------------------------------------------------------------- trainer
def _h5_names(path) -> list[str]:
    import h5py

    names = []
    with h5py.File(path, "r") as f:
        f.visit(names.append)
    return sorted(names)


def test_train_on_device_saves_the_bare_network_as_a_host_run_does(tiny_model, synthetic_data, tmp_path):  # noqa: F811
    import json

    import pandas as pd

    import hpa_zoo
    from hpa_zoo.errors import ConfigError
    from hpa_zoo.train.trainer import train
    from tests.test_training import _optimizer_iterations

    host = train(tiny_model, synthetic_data, out_dir=tmp_path / "host", epochs=1, steps_per_epoch=2, verbose=0)
    out = tmp_path / "device"
    device = train(tiny_model, synthetic_data, out_dir=out, epochs=1, steps_per_epoch=2, verbose=0,
                   augment_on="device")
    assert json.loads((out / "run.json").read_text())["augment_on"] == "device"
    for name in ("checkpoints/best.weights.h5", "backup/latest.weights.h5"):
        if (tmp_path / "host" / name).is_file():
            assert _h5_names(out / name) == _h5_names(tmp_path / "host" / name), name
    m_host, m_dev = hpa_zoo.load(str(host)), hpa_zoo.load(str(device))
    assert [w.path for w in m_dev.weights] == [w.path for w in m_host.weights]
    assert m_dev.input_shape == m_host.input_shape == (None, 48, 48, 4)
    assert _optimizer_iterations(out / "backup" / "latest.weights.h5") == 2  # the wrapper's steps, saved bare
    assert "optimizer" not in _h5_names(out / "checkpoints" / "best.weights.h5")  # the best: the layers only
    assert np.isfinite(pd.read_csv(out / "training_log.csv")[["loss", "val_loss"]].to_numpy()).all()
    assert len(json.loads((device / "metadata.json").read_text())["thresholds"]) == 28

    # resume: a re-run with more epochs continues the device run's model, optimizer and epoch
    train(tiny_model, synthetic_data, out_dir=out, epochs=2, steps_per_epoch=2, verbose=0, augment_on="device")
    backups = sorted((out / "backup").glob("*.weights.h5"))
    assert max(_optimizer_iterations(b) for b in backups) == 4
    with pytest.raises(ConfigError, match="augment_on"):
        train(tiny_model, synthetic_data, out_dir=out, epochs=3, steps_per_epoch=2, verbose=0)


def test_device_for_a_recipe_without_one_names_the_recipe_and_the_fix(tiny_model, tmp_path):  # noqa: F811
    from hpa_zoo.errors import ConfigError
    from hpa_zoo.train.trainer import train

    RECIPE_PATCH["device_augment"] = None
    with pytest.raises(ConfigError, match=r"team1_512.*--augment-on host"):
        train(tiny_model, tmp_path / "nowhere", out_dir=tmp_path / "run", augment_on="device", verbose=0)
    with pytest.raises(ConfigError, match="augment_on='gpu'"):
        train(tiny_model, tmp_path / "nowhere", out_dir=tmp_path / "run", augment_on="gpu", verbose=0)
