"""Tests for hpa_zoo.augment.transforms: Team 3's search-space ops against NumPy/OpenCV/SciPy references, and policies."""
from __future__ import annotations

import functools
import itertools
import json

import cv2
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from hpa_zoo.augment import transforms as A
from hpa_zoo.augment import autoaugment
from hpa_zoo.errors import ConfigError

SEED = tf.constant([7, 11], tf.int64)
RNG = np.random.default_rng(1234)
NOISE_U8 = RNG.integers(0, 256, (32, 32, 4)).astype(np.uint8)


def smooth_image(size=48, channels=4, seed=0) -> np.ndarray:
    """A low-frequency float image in [10, 245] (bilinear sampling differences stay small on it)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(10, 245, (6, 6, channels)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).clip(10, 245).reshape(size, size, channels)


# strong magnitudes: the upper ends of the search space (teams.md §3.5), so every op really changes the image
STRONG = {
    "RandomContrast": {"limit": 0.3},
    "RandomBrightness": {"limit": 0.3},
    "RandomGamma": {"gamma_limit": (70, 130)},
    "Blur": {"blur_limit": 5},
    "MotionBlur": {"blur_limit": 5},
    "InvertImg": {},
    "Rotate": {"limit": 45},
    "ShiftScaleRotate": {"shift_limit": 0.12, "scale_limit": 0.1, "rotate_limit": 20},
    "RandomScale": {"scale_limit": 0.2},
    "GridDistortion": {"num_steps": 5, "distort_limit": 0.5},
    "ElasticTransform": {"alpha": 1, "sigma": 30, "alpha_affine": 10},
}
RANDOM_OPS = [name for name in autoaugment.OP_NAMES if name != "InvertImg"]


def run(name, image, seed=SEED, **magnitude):
    magnitude = magnitude or STRONG[name]
    return autoaugment.OPS[name].fn(tf.constant(image), seed, **magnitude).numpy()


def test_op_table_is_the_search_space():
    assert set(autoaugment.OPS) == set(autoaugment.SEARCH_SPACE) == set(STRONG)
    assert len(autoaugment.OPS) == 11


# ---------------------------------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", autoaugment.OP_NAMES)
def test_op_keeps_shape_dtype_and_range_for_any_channel_count(name):
    for channels, dtype in itertools.product((1, 3, 4), (np.uint8, np.float32)):
        image = NOISE_U8[..., :channels].astype(dtype)
        out = run(name, image)
        assert out.shape == image.shape and out.dtype == dtype, (channels, dtype)
        assert out.min() >= 0 and out.max() <= 255
        if dtype == np.float32:
            assert np.isfinite(out).all()


@pytest.mark.parametrize("name", autoaugment.OP_NAMES)
def test_op_is_deterministic_under_seed_and_varies_with_seed(name):
    image = smooth_image(32).astype(np.uint8)
    first = run(name, image, seed=tf.constant([3, 4], tf.int64))
    again = run(name, image, seed=tf.constant([3, 4], tf.int64))
    np.testing.assert_array_equal(first, again)
    others = [run(name, image, seed=tf.constant([3, s], tf.int64)) for s in (5, 6, 7)]
    if name in RANDOM_OPS:
        assert any(not np.array_equal(first, o) for o in others)
    else:
        assert all(np.array_equal(first, o) for o in others)


@pytest.mark.parametrize("name", autoaugment.OP_NAMES)
def test_identical_channels_stay_identical(name):
    plane = smooth_image(32, channels=1)
    image = np.repeat(plane, 4, axis=-1)
    out = run(name, image)
    for c in range(1, 4):
        np.testing.assert_array_equal(out[..., c], out[..., 0])
    assert not np.array_equal(out, image) or name == "RandomGamma"  # (gamma can draw ~1 and truncate to x)


def test_every_op_runs_inside_tf_data_map_like_eager():
    image = smooth_image(32).astype(np.uint8)

    def per_op(seed):
        return {name: autoaugment.OPS[name].fn(tf.constant(image), seed, **STRONG[name]) for name in autoaugment.OP_NAMES}

    seed = tf.constant([1, 2], tf.int64)
    (graph,) = tf.data.Dataset.from_tensors(seed).map(per_op).as_numpy_iterator()
    for name in autoaugment.OP_NAMES:
        np.testing.assert_allclose(graph[name].astype(float), run(name, image, seed=seed).astype(float), atol=1,
                                   err_msg=name)
        assert graph[name].shape == image.shape and graph[name].dtype == np.uint8


# ---------------------------------------------------------------------------------------------- photometric
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_invert_maps_x_to_255_minus_x(dtype):
    image = np.arange(256).reshape(16, 16, 1).repeat(4, -1).astype(dtype)
    np.testing.assert_array_equal(A.invert_img(image).numpy(), (255 - image.astype(np.float32)).astype(dtype))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_zero_magnitude_is_identity(dtype):
    image = NOISE_U8.astype(dtype)
    zero = {
        "RandomContrast": {"limit": 0.0},
        "RandomBrightness": {"limit": 0.0},
        "RandomGamma": {"gamma_limit": (100, 100)},
        "ShiftScaleRotate": {"shift_limit": 0.0, "scale_limit": 0.0, "rotate_limit": 0},
        "RandomScale": {"scale_limit": 0.0},
        "Rotate": {"limit": 0},
        "GridDistortion": {"num_steps": 5, "distort_limit": 0.0},
        "ElasticTransform": {"alpha": 0, "sigma": 50, "alpha_affine": 0},
    }
    for name, magnitude in zero.items():
        out = run(name, image, **magnitude)
        np.testing.assert_allclose(out.astype(float), image.astype(float), atol=1e-3, err_msg=name)
    out = A.random_scale(image, SEED, 0.0, mode="crop_or_pad").numpy()
    np.testing.assert_allclose(out.astype(float), image.astype(float), atol=1e-3)


def test_brightness_shifts_mid_grey_mean_by_beta_times_mean():
    grey = np.full((16, 16, 4), 128, np.uint8)
    # albumentations 0.1.8: x + beta * mean(x); (0.2, 0.2) forces beta = 0.2
    assert np.all(A.random_brightness(grey.astype(np.float32), SEED, (0.2, 0.2)).numpy() == pytest.approx(153.6))
    assert np.all(A.random_brightness(grey, SEED, (0.2, 0.2)).numpy() == 153)  # numpy astype truncates
    assert np.all(A.random_brightness(grey, SEED, (-0.1, -0.1)).numpy() == 115)  # 128 - 12.8
    # later albumentations (>= 0.4, brightness_by_max): x + 255 * beta
    assert np.all(A.random_brightness(grey, SEED, (0.2, 0.2), beta_by_max=True).numpy() == 179)
    # random beta: shift within +-limit * mean and different seeds give different shifts
    shifts = {float(A.random_brightness(grey.astype(np.float32), tf.constant([0, s]), 0.3).numpy().mean() - 128)
              for s in range(8)}
    assert len(shifts) == 8 and all(abs(s) <= 0.3 * 128 + 1e-3 for s in shifts)


def test_brightness_and_contrast_match_numpy_formula():
    image = NOISE_U8
    for alpha, beta in [(1.25, 0.0), (0.8, 0.0), (1.0, 0.15), (1.1, -0.2)]:
        ref = np.clip(image.astype(np.float32) * alpha + beta * image.mean(), 0, 255).astype(np.uint8)
        out = A.adjust_brightness_contrast(image, alpha, beta).numpy()
        assert np.abs(out.astype(int) - ref).max() <= 1
        assert (out == ref).mean() > 0.99


def test_contrast_scales_values_about_zero():
    image = smooth_image(16)
    out = A.random_contrast(image, SEED, (0.25, 0.25)).numpy()  # alpha = 1.25
    np.testing.assert_allclose(out, np.clip(image * 1.25, 0, 255), rtol=1e-6)
    low = A.random_contrast(image, SEED, (-0.25, -0.25)).numpy()
    np.testing.assert_allclose(low - low.mean(), 0.75 * (image - image.mean()), atol=1e-3)


def test_gamma_matches_numpy_lut_with_inverse_exponent():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(4, -1)
    for percent in (70, 130):
        gamma = percent / 100.0
        ref = (((np.arange(256) / 255.0) ** (1.0 / gamma)) * 255).astype(np.uint8)  # albumentations 0.1.8 LUT
        out = A.random_gamma(values, SEED, (percent, percent)).numpy()
        np.testing.assert_array_equal(out, ref[values])
        outf = A.random_gamma(values.astype(np.float32), SEED, (percent, percent)).numpy()
        np.testing.assert_allclose(outf, 255 * (values / 255.0) ** (1 / gamma), atol=1e-3)


def test_gamma_draws_integer_percent_inclusive():
    grey = np.full((2, 2, 1), 100, np.uint8).astype(np.float32)
    seen = {round(float(np.log(A.random_gamma(grey, tf.constant([1, s]), (98, 100)).numpy()[0, 0, 0] / 255)
                        / np.log(100 / 255)), 4) for s in range(60)}
    assert seen == {round(1 / g, 4) for g in (0.98, 0.99, 1.0)}


# ---------------------------------------------------------------------------------------------------- blurs
@pytest.mark.parametrize("ksize", [3, 4, 5])
def test_box_blur_matches_opencv_blur(ksize):
    box = np.ones((ksize, ksize)) / ksize**2
    np.testing.assert_array_equal(A.box_blur(NOISE_U8, ksize).numpy(), cv2.filter2D(NOISE_U8, -1, box))
    ref = cv2.blur(NOISE_U8, (ksize, ksize))  # default BORDER_REFLECT_101, anchor (-1, -1)
    assert np.abs(A.box_blur(NOISE_U8, ksize).numpy().astype(int) - ref).max() <= 1  # cv2.blur rounds in fixed point
    reff = cv2.blur(NOISE_U8.astype(np.float32), (ksize, ksize))
    np.testing.assert_allclose(A.box_blur(NOISE_U8.astype(np.float32), ksize).numpy(), reff, atol=1e-3)


@pytest.mark.parametrize("name", ["Blur", "MotionBlur"])
def test_blur_keeps_constant_and_spreads_impulse_preserving_mass(name):
    constant = np.full((24, 24, 4), 77, np.uint8)
    np.testing.assert_array_equal(run(name, constant), constant)
    impulse = np.zeros((24, 24, 4), np.float32)
    impulse[12, 12] = 255.0
    for s in range(4):
        out = run(name, impulse, seed=tf.constant([2, s]))
        np.testing.assert_allclose(out.sum(axis=(0, 1)), 255.0, rtol=1e-5)
        assert out.max() < 255.0 and (out > 0).sum(axis=(0, 1)).min() >= 2  # mass spread to >= 2 pixels
        rows, cols = np.nonzero(out[..., 0])
        assert np.ptp(rows) <= 4 and np.ptp(cols) <= 4  # within the 5x5 kernel


def test_motion_blur_kernel_matches_opencv_line_for_every_endpoint():
    spec = tf.TensorSpec([], tf.int32)
    kernel = tf.function(lambda *args: A.motion_blur_kernel(*args, frame=5), input_signature=[spec] * 5)
    for k in (3, 5):
        for xs, ys, xe, ye in itertools.product(range(k), repeat=4):
            ref = np.zeros((k, k), np.uint8)
            cv2.line(ref, (xs, ys), (xe, ye), 1, thickness=1)
            ref = ref / ref.sum()
            out = kernel(*(tf.constant(v, tf.int32) for v in (k, xs, ys, xe, ye))).numpy()
            off = (5 - k) // 2
            np.testing.assert_allclose(out[off:off + k, off:off + k], ref, atol=1e-6, err_msg=str((k, xs, ys, xe, ye)))
            assert out.sum() == pytest.approx(1.0)


def test_motion_blur_matches_opencv_filter2d():
    kernel = A.motion_blur_kernel(5, 0, 1, 4, 3).numpy()
    ref = cv2.filter2D(NOISE_U8, -1, kernel)
    out = A.filter2d(NOISE_U8, kernel).numpy()
    assert np.abs(out.astype(int) - ref).max() <= 1


# ------------------------------------------------------------------------------------------------ geometry
def test_rotate_90_matches_opencv_and_np_rot90_shifted_by_one_pixel():
    image = NOISE_U8
    out = A.rotate(image, SEED, limit=(90, 90)).numpy()
    matrix = cv2.getRotationMatrix2D((16.0, 16.0), 90, 1.0)  # albumentations centre (W/2, H/2)
    ref = cv2.warpAffine(image, matrix, (32, 32), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    np.testing.assert_array_equal(out, ref)
    # centre W/2 instead of (W-1)/2: np.rot90 moved down one row, first row reflected
    np.testing.assert_array_equal(out[1:], np.rot90(image)[:-1])
    np.testing.assert_array_equal(out[0], out[2])


def _cv2_ssr(image, angle, scale, dx, dy):
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)  # albumentations 0.1.x shift_scale_rotate
    matrix[0, 2] += dx * w
    matrix[1, 2] += dy * h
    return matrix, cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


@pytest.mark.parametrize("angle,scale,shift", [(30.0, 1.0, 0.0), (-17.0, 1.2, 0.1), (0.0, 0.9, -0.077)])
def test_shift_scale_rotate_matches_opencv_warp_affine(angle, scale, shift):
    image = smooth_image(48)
    out = A.shift_scale_rotate(image, SEED, shift_limit=(shift, shift), scale_limit=(scale - 1, scale - 1),
                               rotate_limit=(angle, angle)).numpy()
    _, ref = _cv2_ssr(image, angle, scale, shift, shift)
    diff = np.abs(out - ref)  # OpenCV quantises source coordinates to 1/32 px
    assert diff.max() < 2.0 and diff.mean() < 0.2
    matrix, ref = _cv2_ssr(image, angle, scale, shift, -0.05)  # dx != dy through the matrix helper
    diff = np.abs(A.warp_affine(image, matrix).numpy() - ref)
    assert diff.max() < 2.0 and diff.mean() < 0.2


def test_rotation_and_affine_helpers_match_opencv():
    np.testing.assert_allclose(A.rotation_matrix((10.0, 7.5), 33.0, 1.3).numpy(),
                               cv2.getRotationMatrix2D((10.0, 7.5), 33.0, 1.3), atol=1e-9)
    src = np.float32([[40, 40], [40, 8], [8, 8]])
    dst = src + np.float32([[3, -2], [-5, 1], [2, 4]])
    np.testing.assert_allclose(A.affine_from_points(src, dst).numpy(), cv2.getAffineTransform(src, dst), atol=1e-6)


def test_remap_matches_opencv_remap_with_reflect101_far_outside():
    image = smooth_image(32)
    rng = np.random.default_rng(5)
    map_x = rng.uniform(-40, 70, (20, 24)).astype(np.float32)
    map_y = rng.uniform(-40, 70, (20, 24)).astype(np.float32)
    ref = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    out = A.remap(image, map_x, map_y).numpy()
    assert out.shape == (20, 24, 4)
    assert np.abs(out - ref).max() < 2.0 and np.abs(out - ref).mean() < 0.2


def _grid_reference_axis(size, num_steps, steps):
    """Independent NumPy version of the documented 0.1.x grid (exact-linear cells, last partial cell pinned)."""
    step = size // num_steps
    out = np.zeros(size)
    prev = 0.0
    for idx, start in enumerate(range(0, size, step)):
        end = start + step
        cur = float(size) if end > size else prev + step * steps[idx]
        end = min(end, size)
        out[start:end] = prev + (np.arange(start, end) - start) * (cur - prev) / (end - start)
        prev = cur
    return out


@pytest.mark.parametrize("size,num_steps", [(32, 4), (32, 5), (33, 3)])
def test_grid_distortion_maps_match_reference_and_opencv_remap(size, num_steps):
    rng = np.random.default_rng(num_steps)
    steps_x = 1 + rng.uniform(-0.5, 0.5, num_steps + 1)
    steps_y = 1 + rng.uniform(-0.5, 0.5, num_steps + 1)
    map_x, map_y = (m.numpy() for m in A.grid_distortion_maps(size, size, num_steps, steps_x, steps_y))
    ref_x, ref_y = np.meshgrid(_grid_reference_axis(size, num_steps, steps_x),
                               _grid_reference_axis(size, num_steps, steps_y))
    np.testing.assert_allclose(map_x, ref_x, atol=1e-9)
    np.testing.assert_allclose(map_y, ref_y, atol=1e-9)
    image = smooth_image(size)
    ref = cv2.remap(image, ref_x.astype(np.float32), ref_y.astype(np.float32), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT_101)
    assert np.abs(A.remap(image, map_x, map_y).numpy() - ref).max() < 2.0


def test_random_scale_resize_back_and_crop_match_opencv_resize():
    image = smooth_image(40)
    for scale in (0.8, 1.25):
        new = int(40 * (1.0 + (scale - 1)))  # albumentations: int(height * scale), scale = 1 + offset
        small = cv2.resize(image, (new, new), interpolation=cv2.INTER_LINEAR)
        back = cv2.resize(small, (40, 40), interpolation=cv2.INTER_LINEAR)
        out = A.random_scale(image, SEED, (scale - 1, scale - 1)).numpy()
        assert np.abs(out - back).max() < 0.05
        zoom = A.random_scale(image, SEED, (scale - 1, scale - 1), mode="crop_or_pad").numpy()
        if new >= 40:
            top = (new - 40) // 2
            ref = small[top:top + 40, top:top + 40]
        else:
            pad = (40 - new) // 2
            ref = cv2.copyMakeBorder(small, pad, 40 - new - pad, pad, 40 - new - pad, cv2.BORDER_REFLECT_101)
        assert np.abs(zoom - ref).max() < 0.05


def test_gaussian_filter_matches_scipy_also_when_kernel_exceeds_image():
    field = np.random.default_rng(3).uniform(-1, 1, (20, 26))
    for sigma in (2.0, 9.0, 30.0):  # radius 8, 36, 120 px
        ref = scipy.ndimage.gaussian_filter(field, sigma)
        np.testing.assert_allclose(A.gaussian_filter(field, sigma).numpy(), ref, atol=1e-12)


def test_elastic_with_alpha_zero_is_a_random_affine_of_the_expected_size():
    image = smooth_image(48)
    out = A.elastic_transform(image, SEED, alpha=0, sigma=50, alpha_affine=4).numpy()
    assert np.abs(out - image).mean() > 1.0  # the affine moved the content
    # a small jitter keeps it close to the identity: far less change than a 90° rotation
    assert np.abs(out - image).mean() < 0.5 * np.abs(np.rot90(image) - image).mean()


# --------------------------------------------------------------------------------------------------- policy
# teams.md §3.5 final-policy table (values rounded to 4 decimals there): (op, p, magnitude) pairs
TABLE = [
    (("ElasticTransform", .75, (37, 67)), ("RandomContrast", .25, .1102)),
    (("MotionBlur", 0, 5), ("Rotate", .25, 31)),
    (("RandomBrightness", .75, .1175), ("GridDistortion", .5, (5, .4989))),
    (("RandomBrightness", 0, .1228), ("ElasticTransform", 0, (33, 63))),
    (("InvertImg", .5, None), ("RandomBrightness", .5, .1777)),
    (("ElasticTransform", .25, (60, 65)), ("RandomBrightness", 0, .2082)),
    (("MotionBlur", .25, 3), ("RandomContrast", .25, .2306)),
    (("Rotate", .75, 26), ("Blur", .25, 5)),
    (("ShiftScaleRotate", .25, .0767), ("RandomGamma", .5, (76, 110))),
    (("RandomBrightness", .5, .2038), ("RandomGamma", .5, (78, 110))),
    (("Blur", 0, 3), ("GridDistortion", .5, (4, .3712))),
    (("Blur", 0, 5), ("RandomGamma", .25, (81, 110))),
    (("RandomScale", .75, .1733), ("Blur", 0, 3)),
    (("RandomScale", .25, .0561), ("RandomContrast", .75, .1977)),
    (("ShiftScaleRotate", .25, .1200), ("ElasticTransform", .5, (55, 53))),
    (("RandomContrast", .5, .2537), ("ElasticTransform", 0, (55, 50))),
    (("GridDistortion", .5, (3, .2387)), ("MotionBlur", 0, 3)),
    (("RandomBrightness", 0, .1633), ("Rotate", 0, 10)),
    (("Rotate", .25, 21), ("RandomGamma", .5, (74, 110))),
    (("Blur", 0, 3), ("RandomGamma", 0, (76, 113))),
    (("Blur", .5, 4), ("ShiftScaleRotate", 0, .0817)),
    (("RandomScale", .5, .1499), ("RandomBrightness", .75, .2662)),
    (("GridDistortion", .25, (4, .2751)), ("Rotate", .75, 36)),
    (("ElasticTransform", 0, (62, 68)), ("GridDistortion", .5, (3, .4068))),
    (("RandomGamma", 0, (78, 112)), ("RandomScale", .25, .1789)),
]
_MAIN_KEYS = {"RandomContrast": ("limit",), "RandomBrightness": ("limit",), "Rotate": ("limit",),
              "Blur": ("blur_limit",), "MotionBlur": ("blur_limit",), "RandomGamma": ("gamma_limit",),
              "ShiftScaleRotate": ("shift_limit",), "RandomScale": ("scale_limit",),
              "GridDistortion": ("num_steps", "distort_limit"), "ElasticTransform": ("sigma", "alpha_affine"),
              "InvertImg": ()}


def test_team3_policy_file_matches_teams_md_table():
    policy = autoaugment.load_policy("team3")
    assert len(policy) == 25
    for sub, row in zip(policy, TABLE):
        for op, (name, p, magnitude) in zip(sub, row):
            assert (op.name, op.p) == (name, p)
            got = tuple(op.magnitude[k] for k in _MAIN_KEYS[name])
            want = () if magnitude is None else (magnitude if len(_MAIN_KEYS[name]) > 1 else (magnitude,))
            if name == "RandomGamma":
                want = (magnitude,)
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert np.round(np.asarray(g, float), 4).tolist() == pytest.approx(np.asarray(w, float).tolist())
            if name == "ElasticTransform":
                assert op.magnitude["alpha"] == 1
            if name == "ShiftScaleRotate":
                assert op.magnitude["scale_limit"] == 0 and op.magnitude["rotate_limit"] == 0


def _write(tmp_path, sub_policies, name="p.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"format": autoaugment.POLICY_FORMAT, "sub_policies": sub_policies}))
    return path


GOOD = {"op": "Rotate", "p": 0.5, "magnitude": {"limit": 10}}


@pytest.mark.parametrize("bad,message", [
    ({"op": "Rotat", "p": 0.5, "magnitude": {"limit": 10}}, r"sub_policies\[1\]\[0\].*unknown augmentation op 'Rotat'.*Rotate"),
    ({"op": "Rotate", "p": 1.5, "magnitude": {"limit": 10}}, r"sub_policies\[1\]\[0\] \(Rotate\): p must be"),
    ({"op": "Rotate", "p": 0.5, "magnitude": {"angle": 10}}, r"sub_policies\[1\]\[0\].*no magnitude \['angle'\]"),
    ({"op": "Blur", "p": 0.5, "magnitude": {"blur_limit": 2}}, r"sub_policies\[1\]\[0\].*'blur_limit' must be an integer >= 3"),
    ({"op": "RandomGamma", "p": 0.5, "magnitude": {"gamma_limit": [120, 80]}}, r"gamma_limit' needs 0 < lo <= hi"),
    ({"op": "RandomContrast", "p": 0.5, "magnitude": {"limit": "big"}}, r"'limit' must be a number or a \[lo, hi\]"),
])
def test_bad_policy_entries_raise_clear_errors(tmp_path, bad, message):
    path = _write(tmp_path, [[GOOD, GOOD], [bad, GOOD]])
    with pytest.raises(ConfigError, match=message) as info:
        autoaugment.load_policy(path)
    assert str(path) in str(info.value)


def test_malformed_policy_files_raise_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found.*team3"):
        autoaugment.load_policy(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"sub_policies": [\n  [}')
    with pytest.raises(ConfigError, match="not valid JSON \\(line 2"):
        autoaugment.load_policy(broken)
    with pytest.raises(ConfigError, match=r"sub_policies\[0\]: a sub-policy is a list of exactly 2 ops"):
        autoaugment.load_policy(_write(tmp_path, [[GOOD]]))


def test_apply_with_probability_rates():
    grey = tf.constant(np.full((4, 4, 1), 10, np.uint8))
    for p, expected in ((0.0, 0.0), (1.0, 1.0), (0.25, 0.25)):
        wrapped = [autoaugment.apply_with_probability(A.invert_img, p, tf.constant([int(p * 100), s], tf.int64))
                   for s in range(300)]
        rate = np.mean([w(grey).numpy()[0, 0, 0] == 245 for w in wrapped])
        assert abs(rate - expected) < 0.06


def test_base_d4_yields_all_eight_dihedral_images():
    image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    group = {np.rot90(t, k).tobytes() for t in (image, image.transpose(1, 0, 2)) for k in range(4)}
    ds = tf.data.Dataset.range(200).map(lambda s: autoaugment.base_d4(image, tf.stack([tf.constant(9, tf.int64), s])))
    seen = {out.tobytes() for out in ds.as_numpy_iterator()}
    assert seen == group


def test_apply_policy_picks_every_sub_policy_roughly_uniformly():
    # 25 sub-policies that each map a constant image to a distinct value (D4 leaves a constant image unchanged)
    policy = [autoaugment.SubPolicy(autoaugment.PolicyOp("RandomContrast", 1.0, {"limit": (i / 100, i / 100)}),
                          autoaugment.PolicyOp("InvertImg", 0.0, {})) for i in range(25)]
    image = tf.constant(np.full((8, 8, 4), 100.0, np.float32))
    ds = tf.data.Dataset.range(2000).map(lambda s: autoaugment.apply_policy(image, policy, tf.stack([s, 17]))[0, 0, 0])
    values = np.fromiter(ds.as_numpy_iterator(), float)
    counts = np.bincount(np.round(values - 100).astype(int), minlength=25)
    assert counts.size == 25 and counts.sum() == 2000
    assert counts.min() >= 50 and counts.max() <= 115  # expectation 80 per sub-policy


def test_sample_policy_follows_search_space_and_round_trips(tmp_path):
    policy = autoaugment.sample_policy(np.random.default_rng(0), n_subpolicies=40)
    assert len(policy) == 40
    assert autoaugment.sample_policy(3) == autoaugment.sample_policy(3)
    names = set()
    for sub in policy:
        assert sub.first.name != sub.second.name
        for op in sub:
            names.add(op.name)
            assert op.p in autoaugment.P_CHOICES
            for key, spec in autoaugment.SEARCH_SPACE[op.name].items():
                value = op.magnitude[key]
                pair = isinstance(spec, tuple) and not isinstance(spec, (autoaugment.Uniform, autoaugment.RandInt))
                for v, s in zip(value if pair else (value,), spec if pair else (spec,)):
                    if isinstance(s, (autoaugment.Uniform, autoaugment.RandInt)):
                        assert s.lo <= v <= s.hi
                        assert isinstance(v, int) == isinstance(s, autoaugment.RandInt)
                    else:
                        assert v == s
    assert names == set(autoaugment.OP_NAMES)
    path = autoaugment.save_policy(policy, tmp_path / "sub" / "policy.json")
    assert autoaugment.load_policy(path) == policy
    assert not list(path.parent.glob(".*tmp*"))  # atomic write left no temporary file
    with pytest.raises(ConfigError, match=r"policy\[0\]\[1\].*unknown augmentation op"):
        autoaugment.save_policy([(autoaugment.PolicyOp("Rotate", 0.5, {}), autoaugment.PolicyOp("Nope", 0.5, {}))], tmp_path / "x.json")


def test_apply_policy_equals_d4_then_the_chosen_sub_policy():
    image = tf.constant(smooth_image(32).astype(np.uint8))
    policy = autoaugment.load_policy("team3")
    chosen = set()
    for k in range(12):
        seed = tf.constant([5, k], tf.int64)
        d4_seed, choice_seed, op_seed = tf.random.experimental.stateless_split(seed, 3)
        index = int(autoaugment.choose_sub_policy(choice_seed, len(policy)))
        chosen.add(index)
        ref = autoaugment.apply_sub_policy(autoaugment.base_d4(image, d4_seed), policy[index], op_seed).numpy()
        out = autoaugment.apply_policy(image, policy, seed).numpy()
        assert np.abs(out.astype(int) - ref).max() <= 1, (k, index)
    assert len(chosen) >= 6


def test_team3_policy_applies_to_rgby_images_with_partial_for_custom_ops():
    image = tf.constant(NOISE_U8)
    out = autoaugment.apply_policy(image, autoaugment.load_policy("team3"), SEED)
    assert out.shape == image.shape and out.dtype == tf.uint8
    wrapped = autoaugment.apply_with_probability(functools.partial(A.rotate, limit=26), 1.0, SEED)
    assert wrapped(image).shape == image.shape
