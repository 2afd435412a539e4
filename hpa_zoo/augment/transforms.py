"""Team 3's (pudae) AutoAugment search space as RGBY-safe TensorFlow ops, and augmentation policies as data.

teams.md §3.5: pudae searched augmentation policies over 11 albumentations ops (random search, 5 sub-policies of
2 ops each per candidate) and trained the final models with the top-5 candidates flattened into 25 sub-policies.
Training transform: base D4 (RandomRotate90, Flip, Transpose, each p=0.5), then ONE sub-policy chosen uniformly,
each of its two ops applied with its own probability, then Resize, then normalisation.

Every op here is ``op(image, seed, **magnitude) -> image`` on ONE image:
- ``image``: (H, W, C) **uint8**, or **float32 in [0, 255]**; any C (RGBY C=4, also C=1 or C=3). The output has the
  same shape, dtype and value range. Channels are processed independently but with the SAME random parameters
  (one warp, one kernel, one factor for all channels), so an RGBY image stays registered.
- ``seed``: (2,) int32/int64 tensor (``tf.random.stateless_*`` convention). Same seed -> same output.
- pure TF graph ops (no py_function), usable in ``tf.data.Dataset.map``. Shapes stay static.

Magnitudes mean what they meant in **albumentations 0.1.8** (the version pinned in `pudae:requirements.txt`).
The 0.1.x sources were read (`transforms.py`/`functional.py` of the 0.1 series); each op's docstring says what was
verified there and what is inferred. Two findings differ from the summary in teams.md §3.5:
- RandomBrightness in 0.1.8 adds ``beta * mean(image)`` (``brightness_contrast_adjust``), not ``beta * 255``;
  the ``255·β`` form is albumentations >= 0.4 (``brightness_by_max=True``). ``beta_by_max=True`` gives the later form.
- RandomGamma's uint8 path in 0.1.8 applies the exponent **1/γ** (``invGamma``): ``255·(x/255)**(1/γ)``.
Where albumentations' uint8 code truncates (``np.clip(...).astype(uint8)``, LUTs) we floor; where OpenCV computes
(``cv2.blur``/``filter2D``/``warpAffine``/``remap``/``resize``) we round. Float32 inputs are never rounded.
Magnitudes given in pixels (``alpha_affine``) are pixels of the image the op sees (pudae: 512 px images).

Policies: `load_policy`, `save_policy`, `apply_policy`, `sample_policy`, `SEARCH_SPACE`; packaged policy files live
in `hpa_zoo/augment/policies/` (``"team3"`` = pudae's final 25 sub-policies).
"""
from __future__ import annotations

import difflib
import functools
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from hpa_zoo.atomic import atomic_write_text
from hpa_zoo.errors import ConfigError

ALBUMENTATIONS_VERSION = "0.1.8"  # pudae:requirements.txt
MAX_VALUE = 255.0  # uint8 range; float32 images are in [0, 255] (docs/ARCHITECTURE.md)
POLICY_FORMAT = "hpa_zoo.augment_policy/1"

__all__ = [
    "OPS", "OP_NAMES", "SEARCH_SPACE", "P_CHOICES", "PolicyOp", "SubPolicy", "Uniform", "RandInt",
    "random_contrast", "random_brightness", "random_gamma", "blur", "motion_blur", "invert_img", "rotate",
    "shift_scale_rotate", "random_scale", "grid_distortion", "elastic_transform",
    "adjust_brightness_contrast", "gamma_transform", "box_blur", "filter2d", "motion_blur_kernel",
    "rotation_matrix", "affine_from_points", "warp_affine", "remap", "grid_distortion_maps", "gaussian_filter",
    "apply_with_probability", "base_d4", "choose_sub_policy", "apply_sub_policy", "apply_policy",
    "load_policy", "save_policy", "sample_policy", "validate_magnitude",
]


# --------------------------------------------------------------------------------------------------------------
# small helpers: dtype, seeds, albumentations-style ranges
# --------------------------------------------------------------------------------------------------------------
def _check_image(image) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.dtype not in (tf.uint8, tf.float32):
        raise ConfigError(f"augment ops take uint8 or float32 [0,255] images, got dtype {image.dtype.name}; "
                          "cast with tf.cast(image, tf.float32) first")
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ConfigError(f"augment ops take ONE image (H, W, C), got shape {image.shape}; map over the batch")
    return image


def _finish(values: tf.Tensor, like: tf.Tensor, rounding: str, same_shape: bool = True) -> tf.Tensor:
    """Clip float32 `values` to [0, 255] and return them in `like`'s dtype (and static shape if `same_shape`).

    rounding: "floor" (albumentations' numpy ``astype(uint8)``) or "round" (OpenCV ``saturate_cast``, half to even);
    only applied to uint8 outputs.
    """
    values = tf.clip_by_value(values, 0.0, MAX_VALUE)
    if like.dtype == tf.uint8:
        values = tf.floor(values) if rounding == "floor" else tf.round(values)
    out = tf.cast(values, like.dtype)
    if same_shape:
        out.set_shape(like.shape)
    return out


def _seed(seed) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    if seed.shape.rank is not None and seed.shape.as_list() != [2]:
        raise ConfigError(f"seed must be a (2,) int tensor (stateless RNG seed), got shape {seed.shape}")
    return seed


def _split(seed, n: int) -> list[tf.Tensor]:
    """`n` independent (2,) seeds derived from `seed`."""
    seeds = tf.random.experimental.stateless_split(_seed(seed), num=n)
    return [seeds[i] for i in range(n)]


def _uniform(seed, lo, hi, shape=(), dtype=tf.float32) -> tf.Tensor:
    """U[lo, hi) in `dtype` (exactly lo when lo == hi); lo, hi python floats or float tensors."""
    lo, hi = tf.cast(lo, dtype), tf.cast(hi, dtype)
    return tf.random.stateless_uniform(shape, seed=seed, minval=lo, maxval=hi, dtype=dtype)


def _as_int(value) -> tf.Tensor:
    """int32 scalar from a python int or an (integer-valued) numeric tensor."""
    return tf.cast(tf.round(tf.cast(value, tf.float64)), tf.int32)


def _randint(seed, lo, hi) -> tf.Tensor:
    """int32 uniform on {lo, ..., hi} inclusive (Python ``random.randint``); bounds python ints or int tensors."""
    lo, hi = _as_int(lo), _as_int(hi)
    return tf.random.stateless_uniform((), seed=seed, minval=lo, maxval=hi + 1, dtype=tf.int32)


def _is_tensor(value) -> bool:
    return tf.is_tensor(value) or (isinstance(value, (list, tuple)) and any(tf.is_tensor(v) for v in value))


def _to_range(value, bias: float = 0.0):
    """albumentations ``to_tuple``: a scalar v means (-v, v); a pair is kept; `bias` is added to both ends.

    Python numbers give python floats; tensors (a scalar or a (2,) pair) give float32 tensors.
    """
    if _is_tensor(value):
        value = tf.cast(value, tf.float32)
        if value.shape.rank == 0:
            return -tf.abs(value) + bias, tf.abs(value) + bias
        return value[0] + bias, value[1] + bias
    if isinstance(value, numbers.Real):
        lo, hi = -abs(float(value)), abs(float(value))
    else:
        lo, hi = (float(v) for v in value)
    return lo + bias, hi + bias


def _hw(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    shape = tf.shape(image)
    return shape[0], shape[1]


# --------------------------------------------------------------------------------------------------------------
# photometric ops
# --------------------------------------------------------------------------------------------------------------
def adjust_brightness_contrast(image, alpha=1.0, beta=0.0, *, beta_by_max: bool = False) -> tf.Tensor:
    """albumentations 0.1.8 ``brightness_contrast_adjust``: ``clip(alpha·x + beta·mean(x))``.

    image (H, W, C) uint8 / float32 [0,255]; alpha, beta: float scalars (python or tensor). ``mean(x)`` is the mean
    over all pixels AND channels of the input (``np.mean(img)``, verified). ``beta_by_max=True`` uses ``beta·255``
    instead (albumentations >= 0.4 default). uint8 results are truncated like numpy ``astype``. Same shape/dtype out.
    """
    image = _check_image(image)
    x = tf.cast(image, tf.float32)
    scale = tf.constant(MAX_VALUE) if beta_by_max else tf.reduce_mean(x)
    return _finish(x * tf.cast(alpha, tf.float32) + tf.cast(beta, tf.float32) * scale, image, "floor")


def random_contrast(image, seed, limit=0.2) -> tf.Tensor:
    """RandomContrast(limit): ``clip(α·x)``, α ~ U(1 - l, 1 + l).

    Verified (0.1.x ``RandomContrast`` = ``RandomBrightnessContrast(brightness_limit=0, contrast_limit=limit)``,
    ``alpha = 1 + uniform(-l, l)``, ``img·alpha + 0·mean``): the contrast factor multiplies values around **zero**
    (not around the mean), so it scales deviations from 0 and also shifts the mean; clipped to [0, 255].
    limit: float l >= 0 or a (lo, hi) pair of offsets. image (H, W, C) uint8/float32, seed (2,) int -> same shape/dtype.
    """
    lo, hi = _to_range(limit)
    return adjust_brightness_contrast(image, 1.0 + _uniform(_seed(seed), lo, hi), 0.0)


def random_brightness(image, seed, limit=0.2, *, beta_by_max: bool = False) -> tf.Tensor:
    """RandomBrightness(limit): ``clip(x + β·mean(x))``, β ~ U(-l, l).

    Verified (0.1.x ``brightness_contrast_adjust``: ``img·alpha + beta·np.mean(img)`` with alpha=1): the shift is
    relative to the image mean (all channels together), e.g. a mid-grey 128 image with β=0.2 becomes 153.6
    (uint8: 153). teams.md §3.5 describes the later ``x + 255·β`` form; pass ``beta_by_max=True`` for it.
    limit: float l >= 0 or (lo, hi). image (H, W, C) uint8/float32, seed (2,) int -> same shape/dtype.
    """
    lo, hi = _to_range(limit)
    return adjust_brightness_contrast(image, 1.0, _uniform(_seed(seed), lo, hi), beta_by_max=beta_by_max)


def gamma_transform(image, gamma) -> tf.Tensor:
    """albumentations 0.1.8 ``gamma_transform`` (uint8 path): ``255·(x/255)**(1/gamma)``.

    Verified: the 0.1.x uint8 path builds a LUT with ``invGamma = 1/gamma`` and truncates it to uint8; we apply the
    same LUT (computed in float64) to uint8 images. Its float path used ``x**gamma`` on [0,1] images, which is
    inconsistent; pudae's images were uint8, so float32 [0,255] inputs here get the uint8 formula without rounding.
    image (H, W, C) uint8/float32, gamma: positive float scalar -> same shape/dtype.
    """
    image = _check_image(image)
    inv = 1.0 / tf.cast(gamma, tf.float64)
    if image.dtype == tf.uint8:
        table = tf.floor(tf.pow(tf.range(256, dtype=tf.float64) / MAX_VALUE, inv) * MAX_VALUE)
        table = tf.cast(tf.clip_by_value(table, 0.0, MAX_VALUE), tf.uint8)
        out = tf.gather(table, tf.cast(image, tf.int32))
        out.set_shape(image.shape)
        return out
    x = tf.clip_by_value(image, 0.0, MAX_VALUE) / MAX_VALUE
    return _finish(tf.pow(x, tf.cast(inv, tf.float32)) * MAX_VALUE, image, "floor")


def random_gamma(image, seed, gamma_limit=(80, 120)) -> tf.Tensor:
    """RandomGamma(gamma_limit=(lo, hi) in percent): γ = randint(lo, hi)/100 (inclusive), then `gamma_transform`.

    Verified: 0.1.x ``get_params`` draws ``random.randint(lo, hi) / 100.0`` (integer percent) and the uint8 path
    raises to 1/γ (see `gamma_transform`). (100, 100) is the identity.
    image (H, W, C) uint8/float32, seed (2,) int -> same shape/dtype.
    """
    gamma = tf.cast(_randint(_seed(seed), gamma_limit[0], gamma_limit[1]), tf.float64) / 100.0
    return gamma_transform(image, gamma)


def invert_img(image, seed=None) -> tf.Tensor:
    """InvertImg: ``255 - x`` (verified: 0.1.x ``invert(img) = 255 - img``). `seed` is ignored (deterministic).

    image (H, W, C) uint8 or float32 in [0, 255] (255 is this project's float maximum) -> same shape/dtype.
    """
    del seed
    image = _check_image(image)
    return tf.constant(255, image.dtype) - image


# --------------------------------------------------------------------------------------------------------------
# convolution ops (box blur, motion blur)
# --------------------------------------------------------------------------------------------------------------
def _reflect101(index: tf.Tensor, size) -> tf.Tensor:
    """OpenCV BORDER_REFLECT_101 (``gfedcb|abcdefgh|gfedcba``) of int32 indices into [0, size)."""
    size = tf.cast(size, tf.int32)
    period = tf.maximum(2 * size - 2, 1)
    index = tf.math.floormod(tf.abs(index), period)
    index = tf.where(index >= size, period - index, index)
    return tf.where(size == 1, tf.zeros_like(index), index)


def _pad_reflect101(x: tf.Tensor, pad: int) -> tf.Tensor:
    """Pad (H, W, C) by `pad` pixels on every side with reflect-101 (any pad, also larger than the image)."""
    if pad == 0:
        return x
    h, w = _hw(x)
    rows = _reflect101(tf.range(-pad, h + pad), h)
    cols = _reflect101(tf.range(-pad, w + pad), w)
    return tf.gather(tf.gather(x, rows, axis=0), cols, axis=1)


def filter2d(image, kernel) -> tf.Tensor:
    """OpenCV ``cv2.filter2D(img, -1, kernel)``: correlation with a centred odd (K, K) kernel, reflect-101 border.

    image (H, W, C) uint8/float32; kernel (K, K) float (K odd, anchor at the centre) applied to every channel with
    `tf.nn.depthwise_conv2d`. uint8 output is rounded (OpenCV saturate_cast). Same shape/dtype out.
    """
    image = _check_image(image)
    kernel = tf.convert_to_tensor(kernel, tf.float32)
    k = kernel.shape[0]
    if k is None or kernel.shape[1] != k or k % 2 == 0:
        raise ConfigError(f"filter2d needs a static square odd-sized kernel, got shape {kernel.shape}")
    x = _pad_reflect101(tf.cast(image, tf.float32), k // 2)
    channels = tf.shape(image)[2]
    filt = tf.tile(kernel[:, :, None, None], tf.stack([1, 1, channels, 1]))
    out = tf.nn.depthwise_conv2d(x[None], filt, strides=[1, 1, 1, 1], padding="VALID")[0]
    return _finish(out, image, "round")


def _box_kernel(ksize, frame: int) -> tf.Tensor:
    """Normalised ``ksize``×``ksize`` box inside a (frame, frame) kernel, placed like OpenCV's default anchor.

    OpenCV's anchor (-1,-1) is ``ksize // 2``, so the window covers offsets ``-(ksize//2) .. ksize-1-ksize//2``;
    in a frame centred at ``frame // 2`` that is rows/cols ``frame//2 - ksize//2`` .. ``+ ksize - 1``.
    """
    ksize = tf.cast(ksize, tf.int32)
    start = frame // 2 - ksize // 2
    idx = tf.range(frame)
    inside = tf.cast((idx >= start) & (idx < start + ksize), tf.float32)
    box = inside[:, None] * inside[None, :]
    return box / tf.reduce_sum(box)


def box_blur(image, ksize: int) -> tf.Tensor:
    """OpenCV ``cv2.blur(img, (k, k))``: normalised box filter, reflect-101 border, default anchor (also even k).

    image (H, W, C) uint8/float32, ksize python int >= 1 -> same shape/dtype (uint8 rounded).
    """
    ksize = int(ksize)
    if ksize < 1:
        raise ConfigError(f"box_blur ksize must be >= 1, got {ksize}")
    return filter2d(image, _box_kernel(ksize, 2 * (ksize // 2) + 1))


def _kernel_size(seed, blur_limit, max_blur_limit: int | None) -> tuple[tf.Tensor, int]:
    """0.1.x ``Blur.get_params``: ``random.choice(np.arange(3, blur_limit + 1, 2))`` -> odd k, uniform.

    Returns (k int32 tensor, static odd kernel frame >= k). A tensor `blur_limit` needs the python bound
    `max_blur_limit` (the static frame).
    """
    if max_blur_limit is None:
        if _is_tensor(blur_limit):
            raise ConfigError("a tensor blur_limit needs max_blur_limit (a python int bound for the kernel frame)")
        max_blur_limit = blur_limit
    if int(max_blur_limit) < 3 or (not _is_tensor(blur_limit) and int(blur_limit) < 3):
        raise ConfigError(f"blur_limit must be >= 3 (albumentations draws odd kernel sizes in [3, blur_limit]), "
                          f"got {blur_limit}")
    frame = 3 + 2 * ((int(max_blur_limit) - 3) // 2)
    n_sizes = (_as_int(blur_limit) - 3) // 2 + 1
    return 3 + 2 * _randint(seed, 0, n_sizes - 1), frame


def blur(image, seed, blur_limit=7, *, max_blur_limit: int | None = None) -> tf.Tensor:
    """Blur(blur_limit): box blur with a random ODD kernel size k in {3, 5, ..., blur_limit}, uniform.

    Verified: 0.1.x ``Blur.get_params`` = ``random.choice(np.arange(3, blur_limit + 1, 2))`` (odd sizes only, so
    blur_limit=4 always gives k=3) and ``F.blur = cv2.blur(img, (k, k))`` (box, reflect-101). For an explicit even
    kernel use `box_blur`. image (H, W, C) uint8/float32, seed (2,) int -> same shape/dtype. blur_limit may be an
    int tensor when the python bound `max_blur_limit` is given (used by `apply_policy`).
    """
    k, frame = _kernel_size(_seed(seed), blur_limit, max_blur_limit)
    return filter2d(image, _box_kernel(k, frame))


def motion_blur_kernel(ksize, xs, ys, xe, ye, frame: int | None = None) -> tf.Tensor:
    """The normalised line kernel of 0.1.x MotionBlur: ``cv2.line(zeros(k,k), (xs,ys), (xe,ye), 1)`` / sum.

    ksize, xs, ys, xe, ye: int scalars (python or int32 tensors), endpoints in [0, ksize). The line is rasterised
    like OpenCV's 8-connected ``cv2.line`` (verified pixel-exact against OpenCV for k = 3, 5, 7: endpoints ordered by
    increasing x, one pixel per step of the major axis, minor offset rounded half toward zero). Returns a
    (frame, frame) float32 kernel (frame defaults to ksize; the k×k kernel is centred in it).
    """
    frame = int(ksize) if frame is None else int(frame)
    ksize, xs, ys, xe, ye = (tf.cast(v, tf.int32) for v in (ksize, xs, ys, xe, ye))
    swap = xe < xs
    xs, ys, xe, ye = (tf.where(swap, b, a) for a, b in ((xs, xe), (ys, ye), (xe, xs), (ye, ys)))
    dx, dy = xe - xs, ye - ys
    n = tf.maximum(tf.abs(dx), tf.abs(dy))
    steps = tf.minimum(tf.range(frame), n)  # duplicates of the last point are harmless
    t = tf.cast(steps, tf.float64) / tf.cast(tf.maximum(n, 1), tf.float64)

    def along(d):  # offset along one axis, rounded half toward zero
        v = tf.cast(d, tf.float64) * t
        return tf.cast(tf.sign(v) * tf.math.ceil(tf.abs(v) - 0.5), tf.int32)

    major_x = tf.abs(dx) >= tf.abs(dy)
    px = xs + tf.where(major_x, tf.sign(dx) * steps, along(dx))
    py = ys + tf.where(major_x, along(dy), tf.sign(dy) * steps)
    offset = (frame - ksize) // 2
    onehot_y = tf.one_hot(py + offset, frame)
    onehot_x = tf.one_hot(px + offset, frame)
    kernel = tf.reduce_max(onehot_y[:, :, None] * onehot_x[:, None, :], axis=0)
    return kernel / tf.reduce_sum(kernel)


def motion_blur(image, seed, blur_limit=7, *, max_blur_limit: int | None = None) -> tf.Tensor:
    """MotionBlur(blur_limit): filter with a random straight-line kernel of odd size k in {3, ..., blur_limit}.

    Verified (0.1.x ``MotionBlur.get_params``): k as in `blur`; ``xs, xe ~ randint(0, k-1)``; if ``xs == xe`` then
    ``ys, ye`` are two DISTINCT values (``random.sample``), else ``ys, ye ~ randint(0, k-1)``; kernel = ``cv2.line``
    normalised to sum 1, applied with ``cv2.filter2D`` (reflect-101). image (H, W, C) uint8/float32, seed (2,) int ->
    same shape/dtype. blur_limit may be a tensor when `max_blur_limit` is given (see `blur`).
    """
    s = _split(seed, 6)
    k, frame = _kernel_size(s[0], blur_limit, max_blur_limit)
    kmax = tf.cast(k, tf.float32)

    def draw(sd):  # randint(0, k-1) with a tensor k
        return tf.cast(tf.floor(_uniform(sd, 0.0, 1.0) * kmax), tf.int32)

    xs, xe = draw(s[1]), draw(s[2])
    ys_free, ye_free = draw(s[3]), draw(s[4])
    # random.sample(range(k), 2): first uniform, second uniform among the other k-1 values
    ys_pair = ys_free
    other = tf.cast(tf.floor(_uniform(s[5], 0.0, 1.0) * (kmax - 1.0)), tf.int32)
    ye_pair = tf.where(other >= ys_pair, other + 1, other)
    same = tf.equal(xs, xe)
    ys = tf.where(same, ys_pair, ys_free)
    ye = tf.where(same, ye_pair, ye_free)
    return filter2d(image, motion_blur_kernel(k, xs, ys, xe, ye, frame=frame))


# --------------------------------------------------------------------------------------------------------------
# geometric core: bilinear remap with reflect-101 border (cv2.remap / cv2.warpAffine semantics)
# --------------------------------------------------------------------------------------------------------------
def remap(image, map_x, map_y) -> tf.Tensor:
    """``cv2.remap(img, map_x, map_y, INTER_LINEAR, borderMode=BORDER_REFLECT_101)`` as TF gathers.

    image (H, W, C) uint8/float32; map_x, map_y (H', W') float source coordinates in pixels (pixel centres at
    integers): ``out[i, j] = image(map_y[i, j], map_x[i, j])`` bilinearly interpolated, out-of-image neighbours read
    with reflect-101. Returns (H', W', C) in image's dtype (uint8 rounded). All channels use the same maps.
    """
    image = _check_image(image)
    h, w = _hw(image)
    channels = tf.shape(image)[2]
    flat = tf.reshape(tf.cast(image, tf.float32), tf.stack([h * w, channels]))
    map_x = tf.cast(map_x, tf.float32)
    map_y = tf.cast(map_y, tf.float32)
    x0, y0 = tf.floor(map_x), tf.floor(map_y)
    fx, fy = (map_x - x0)[..., None], (map_y - y0)[..., None]
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    xa, xb = _reflect101(x0, w), _reflect101(x0 + 1, w)
    ya, yb = _reflect101(y0, h), _reflect101(y0 + 1, h)

    def at(yy, xx):
        return tf.gather(flat, yy * w + xx)

    top = at(ya, xa) * (1.0 - fx) + at(ya, xb) * fx
    bottom = at(yb, xa) * (1.0 - fx) + at(yb, xb) * fx
    out = top * (1.0 - fy) + bottom * fy
    result = _finish(out, image, "round", same_shape=False)
    if map_x.shape.is_fully_defined():
        result.set_shape(map_x.shape.concatenate(image.shape[2:]))
    return result


def _pixel_grid(h, w) -> tuple[tf.Tensor, tf.Tensor]:
    """(H, W) float64 x and y pixel coordinates."""
    xs = tf.range(tf.cast(w, tf.float64))
    ys = tf.range(tf.cast(h, tf.float64))
    grid_x, grid_y = tf.meshgrid(xs, ys)
    return grid_x, grid_y


def _inverse_affine_maps(matrix, grid_x, grid_y) -> tuple[tf.Tensor, tf.Tensor]:
    """Source coordinates ``M^-1 (x, y)`` for a forward 2×3 affine `matrix` (what cv2.warpAffine samples)."""
    m = tf.cast(matrix, tf.float64)
    a, b, c = m[0, 0], m[0, 1], m[0, 2]
    d, e, f = m[1, 0], m[1, 1], m[1, 2]
    det = a * e - b * d
    x, y = grid_x - c, grid_y - f
    return (e * x - b * y) / det, (-d * x + a * y) / det


def rotation_matrix(center, angle, scale=1.0) -> tf.Tensor:
    """``cv2.getRotationMatrix2D(center, angle, scale)`` as a (2, 3) float64 tensor.

    center: (cx, cy) in pixels; angle in degrees (positive = counter-clockwise on screen, y down); scale float.
    """
    cx, cy = (tf.cast(v, tf.float64) for v in center)
    theta = tf.cast(angle, tf.float64) * (math.pi / 180.0)
    alpha = tf.cast(scale, tf.float64) * tf.cos(theta)
    beta = tf.cast(scale, tf.float64) * tf.sin(theta)
    return tf.stack([
        tf.stack([alpha, beta, (1.0 - alpha) * cx - beta * cy]),
        tf.stack([-beta, alpha, beta * cx + (1.0 - alpha) * cy]),
    ])


def affine_from_points(src, dst) -> tf.Tensor:
    """``cv2.getAffineTransform(src, dst)``: the (2, 3) float64 affine mapping 3 `src` points onto 3 `dst` points.

    src, dst: (3, 2) float (x, y) points.
    """
    src = tf.cast(src, tf.float64)
    dst = tf.cast(dst, tf.float64)
    lhs = tf.concat([src, tf.ones([3, 1], tf.float64)], axis=1)
    return tf.transpose(tf.linalg.solve(lhs, dst))


def warp_affine(image, matrix) -> tf.Tensor:
    """``cv2.warpAffine(img, M, (W, H), INTER_LINEAR, BORDER_REFLECT_101)`` for a forward (2, 3) matrix `M`.

    image (H, W, C) uint8/float32 -> same shape/dtype; ``out(p) = image(M^-1 p)``.
    """
    image = _check_image(image)
    grid_x, grid_y = _pixel_grid(*_hw(image))
    map_x, map_y = _inverse_affine_maps(matrix, grid_x, grid_y)
    out = remap(image, map_x, map_y)
    out.set_shape(image.shape)
    return out


def _center(image) -> tuple[tf.Tensor, tf.Tensor]:
    """albumentations' rotation centre ``(width / 2, height / 2)`` (not the pixel-centre (W-1)/2)."""
    h, w = _hw(image)
    return tf.cast(w, tf.float64) / 2.0, tf.cast(h, tf.float64) / 2.0


def rotate(image, seed, limit=90) -> tf.Tensor:
    """Rotate(limit): rotate by angle ~ U(-limit, limit) degrees about (W/2, H/2), bilinear, reflect-101 border.

    Verified (0.1.x ``F.rotate``): ``cv2.getRotationMatrix2D((width/2, height/2), angle, 1.0)`` +
    ``cv2.warpAffine(INTER_LINEAR, BORDER_REFLECT_101)``; ``get_params`` = ``uniform(-limit, limit)``. Because the
    centre is W/2 (not (W-1)/2), a 90° rotation equals ``np.rot90`` shifted by one pixel (first row reflected).
    limit: degrees, or a (lo, hi) pair ((90, 90) forces 90°). image (H, W, C), seed (2,) int -> same shape/dtype.
    """
    image = _check_image(image)
    lo, hi = _to_range(limit)
    angle = _uniform(_seed(seed), lo, hi)
    return warp_affine(image, rotation_matrix(_center(image), angle, 1.0))


def shift_scale_rotate(image, seed, shift_limit=0.0625, scale_limit=0.1, rotate_limit=45) -> tf.Tensor:
    """ShiftScaleRotate: affine about (W/2, H/2) with angle ~ U(±rotate_limit)°, scale ~ U(1 ± scale_limit),
    shift dx, dy ~ U(±shift_limit) as fractions of W and H (independent), bilinear, reflect-101.

    Verified (0.1.x): ``M = getRotationMatrix2D(center, angle, scale); M[0,2] += dx·W; M[1,2] += dy·H``;
    ``scale_limit`` goes through ``to_tuple(scale_limit, bias=1.0)``. pudae's policy uses scale 0, rotate 0.
    Each limit: a float or a (lo, hi) pair. image (H, W, C), seed (2,) int -> same shape/dtype.
    """
    image = _check_image(image)
    s = _split(seed, 4)
    angle = _uniform(s[0], *_to_range(rotate_limit))
    scale = _uniform(s[1], *_to_range(scale_limit, bias=1.0))
    lo, hi = _to_range(shift_limit)
    dx, dy = _uniform(s[2], lo, hi), _uniform(s[3], lo, hi)
    h, w = _hw(image)
    shift = tf.stack([tf.cast(dx, tf.float64) * tf.cast(w, tf.float64),
                      tf.cast(dy, tf.float64) * tf.cast(h, tf.float64)])
    matrix = rotation_matrix(_center(image), angle, scale)
    matrix = tf.concat([matrix[:, :2], (matrix[:, 2] + shift)[:, None]], axis=1)
    return warp_affine(image, matrix)


def random_scale(image, seed, scale_limit=0.1, *, mode: str = "resize_back") -> tf.Tensor:
    """RandomScale(scale_limit): resize by s ~ U(1 - l, 1 + l) to (int(H·s), int(W·s)), bilinear; then back to (H, W).

    Verified (0.1.x): ``scale_limit`` via ``to_tuple(l, bias=1.0)``; ``F.scale`` = ``cv2.resize`` to
    ``int(height·scale), int(width·scale)``, INTER_LINEAR (tf.image.resize bilinear, half-pixel centres, no
    antialias, matches it). albumentations' output size changes; pudae's pipeline then resized every image to the
    fixed training size (teams.md §3.5 step 3), so to keep shapes static this op returns an (H, W) image:
    - ``mode="resize_back"`` (default): resize the scaled image back to (H, W), i.e. pudae's RandomScale + Resize
      when the training size equals the input size (only the resampling round trip remains);
    - ``mode="crop_or_pad"``: centre crop (s > 1) or reflect-101 pad (s < 1) to (H, W), i.e. a zoom.
    image (H, W, C) uint8/float32, seed (2,) int -> same shape/dtype (uint8 rounded).
    """
    if mode not in ("resize_back", "crop_or_pad"):
        raise ConfigError(f"random_scale mode must be 'resize_back' or 'crop_or_pad', got {mode!r}")
    image = _check_image(image)
    lo, hi = _to_range(scale_limit, bias=1.0)
    scale = _uniform(_seed(seed), lo, hi, dtype=tf.float64)  # float64 like python's int(height * scale)
    h, w = _hw(image)
    new_h = tf.maximum(tf.cast(tf.floor(tf.cast(h, tf.float64) * scale), tf.int32), 1)
    new_w = tf.maximum(tf.cast(tf.floor(tf.cast(w, tf.float64) * scale), tf.int32), 1)
    x = tf.cast(image, tf.float32)
    scaled = tf.image.resize(x, tf.stack([new_h, new_w]), method="bilinear")
    if mode == "resize_back":
        out = tf.image.resize(scaled, tf.stack([h, w]), method="bilinear")
    else:
        # index mapping: offset (new - old) // 2 for a crop, -int((old - new) / 2) for a pad (PadIfNeeded),
        # reflect-101 beyond the scaled image
        def start(new, old):
            return tf.where(new >= old, (new - old) // 2, -((old - new) // 2))

        rows = _reflect101(tf.range(h) + start(new_h, h), new_h)
        cols = _reflect101(tf.range(w) + start(new_w, w), new_w)
        out = tf.gather(tf.gather(scaled, rows, axis=0), cols, axis=1)
    return _finish(out, image, "round")


def _grid_axis_map(size, num_steps, steps: tf.Tensor) -> tf.Tensor:
    """Source coordinate (size,) float64 along one axis for 0.1.x GridDistortion.

    Cells start every ``step = size // num_steps`` pixels; cell k spans ``[k·step, min((k+1)·step, size))`` and its
    end node is ``prev + step·steps[k]``, except a last partial cell (end beyond size) which ends at ``size``.
    Within a cell the map is linear from the previous node. `steps` has num_steps + 1 entries.
    """
    size = tf.cast(size, tf.int32)
    num_steps = _as_int(num_steps)
    step = tf.maximum(size // num_steps, 1)
    n_cells = (size + step - 1) // step
    cell = tf.range(n_cells)
    cell_start = cell * step
    cell_end = tf.minimum(cell_start + step, size)
    clamped = cell_start + step > size
    grow = tf.cast(step, tf.float64) * tf.gather(tf.cast(steps, tf.float64), tf.minimum(cell, num_steps))
    ends = tf.cumsum(grow)
    # a clamped (partial) cell can only be the last one: its end node is the image border
    ends = tf.where(clamped, tf.cast(size, tf.float64), ends)
    starts = tf.concat([tf.zeros([1], tf.float64), ends[:-1]], axis=0)
    pixel = tf.range(size)
    k = pixel // step
    frac = tf.cast(pixel - tf.gather(cell_start, k), tf.float64) / tf.cast(
        tf.gather(cell_end - cell_start, k), tf.float64)
    return tf.gather(starts, k) + frac * (tf.gather(ends, k) - tf.gather(starts, k))


def grid_distortion_maps(height, width, num_steps, steps_x, steps_y) -> tuple[tf.Tensor, tf.Tensor]:
    """(map_x, map_y), each (H, W) float64, of a grid distortion with per-cell stretch factors (see `grid_distortion`).

    steps_x, steps_y: (num_steps + 1,) floats (1 = undistorted cell).
    """
    xx = _grid_axis_map(width, num_steps, steps_x)
    yy = _grid_axis_map(height, num_steps, steps_y)
    return tf.meshgrid(xx, yy)


def grid_distortion(image, seed, num_steps=5, distort_limit=0.3, *, max_num_steps: int | None = None) -> tf.Tensor:
    """GridDistortion(num_steps, distort_limit): stretch each of ~num_steps grid cells per axis by 1 + U(±limit).

    Verified (0.1.x): ``stepsx, stepsy = [1 + uniform(-l, l) for _ in range(num_steps + 1)]`` (separable: one
    factor per column band and per row band), cells of ``size // num_steps`` pixels whose nodes accumulate
    ``step·factor`` (so the grid need not end at the border, except a last partial cell which is pinned to it),
    ``cv2.remap`` INTER_LINEAR, reflect-101. Deliberate deviation (≤ 1 px): 0.1.8 fills each cell with
    ``np.linspace(prev, cur, n)`` (both ends included), which stretches even undistorted cells by n/(n-1) and repeats
    a column at every cell border; here the map is exactly linear inside each cell so distort_limit=0 is the
    identity. image (H, W, C), seed (2,) int -> same shape/dtype. num_steps may be an int tensor when the python
    bound `max_num_steps` is given (the number of random factors drawn is static).
    """
    image = _check_image(image)
    if max_num_steps is None:
        if _is_tensor(num_steps):
            raise ConfigError("a tensor num_steps needs max_num_steps (a python int bound)")
        max_num_steps = num_steps
    lo, hi = _to_range(distort_limit)
    s = _split(seed, 2)
    steps_x = 1.0 + _uniform(s[0], lo, hi, shape=(int(max_num_steps) + 1,))
    steps_y = 1.0 + _uniform(s[1], lo, hi, shape=(int(max_num_steps) + 1,))
    h, w = _hw(image)
    map_x, map_y = grid_distortion_maps(h, w, num_steps, steps_x, steps_y)
    out = remap(image, map_x, map_y)
    out.set_shape(image.shape)
    return out


def _gaussian_matrix(size, sigma) -> tf.Tensor:
    """(size, size) float64 matrix G with ``G @ v == scipy.ndimage.gaussian_filter1d(v, sigma, mode='reflect')``.

    scipy's kernel: radius ``int(4·sigma + 0.5)``, weights ``exp(-x²/(2σ²))`` normalised; 'reflect' border
    (``dcba|abcd``), folded any number of times so the radius may exceed the image. sigma: float or tensor.
    """
    sigma = tf.cast(sigma, tf.float64)
    radius = tf.cast(tf.floor(4.0 * sigma + 0.5), tf.int32)
    offsets = tf.range(-radius, radius + 1)
    weights = tf.exp(-0.5 * tf.square(tf.cast(offsets, tf.float64) / sigma))
    weights = weights / tf.reduce_sum(weights)
    size = tf.cast(size, tf.int32)
    rows = tf.range(size)[:, None]
    cols = tf.math.floormod(rows + offsets[None, :], 2 * size)
    cols = tf.where(cols >= size, 2 * size - 1 - cols, cols)
    indices = tf.stack([tf.broadcast_to(rows, tf.shape(cols)), cols], axis=-1)
    updates = tf.broadcast_to(weights[None, :], tf.shape(cols))
    return tf.scatter_nd(indices, updates, tf.stack([size, size]))


def gaussian_filter(field, sigma: float) -> tf.Tensor:
    """``scipy.ndimage.gaussian_filter(field, sigma)`` (mode 'reflect', truncate 4) of a (H, W) float field -> float64."""
    field = tf.cast(field, tf.float64)
    h, w = _hw(field[..., None])
    return _gaussian_matrix(h, sigma) @ field @ tf.transpose(_gaussian_matrix(w, sigma))


def elastic_transform(image, seed, alpha=1.0, sigma=50.0, alpha_affine=50.0) -> tf.Tensor:
    """ElasticTransform(alpha, sigma, alpha_affine): random affine jitter, then a smoothed random displacement field.

    Verified (0.1.x ``elastic_transform_fast``): with ``c`` the centre and ``s = min(H, W) // 3``, the points
    ``(c + (s, s), c + (s, -s), c - (s, s))`` are moved by U(±alpha_affine) pixels each coordinate and the affine
    ``getAffineTransform(pts1, pts2)`` is applied (``warpAffine``); then ``dx, dy = gaussian_filter(U(-1, 1), sigma)
    · alpha`` and ``remap(x + dx, y + dy)``, both bilinear, reflect-101. With pudae's alpha=1 and sigma 30-70 the
    displacement field is ~0.01 px, so the op is essentially the random affine. alpha_affine is in PIXELS of the
    image this op sees (pudae: 512 px). Inferred/deviations: 0.1.8 took ``c = (H//2, W//2)`` as an (x, y) point (a
    swap that only matters for non-square images; we use (W//2, H//2)), and the two resamplings are composed into
    one here (no intermediate rounding). alpha=0 and alpha_affine=0 give the identity. Magnitudes may be float
    tensors (python zeros skip their stage statically). image (H, W, C) uint8/float32 (H, W >= 3), seed (2,) int ->
    same shape/dtype.
    """
    image = _check_image(image)
    s = _split(seed, 3)
    h, w = _hw(image)
    grid_x, grid_y = _pixel_grid(h, w)
    if _is_tensor(alpha) or float(alpha) != 0.0:
        alpha = tf.cast(alpha, tf.float64)
        noise_x = _uniform(s[1], -1.0, 1.0, shape=tf.stack([h, w]))
        noise_y = _uniform(s[2], -1.0, 1.0, shape=tf.stack([h, w]))
        grid_x = grid_x + gaussian_filter(noise_x, sigma) * alpha
        grid_y = grid_y + gaussian_filter(noise_y, sigma) * alpha
    if _is_tensor(alpha_affine) or float(alpha_affine) != 0.0:
        cx = tf.cast(w // 2, tf.float64)
        cy = tf.cast(h // 2, tf.float64)
        half = tf.cast(tf.minimum(h, w) // 3, tf.float64)
        pts1 = tf.stack([tf.stack([cx + half, cy + half]), tf.stack([cx + half, cy - half]),
                         tf.stack([cx - half, cy - half])])
        jitter = _uniform(s[0], -tf.cast(alpha_affine, tf.float32), alpha_affine, shape=(3, 2))
        pts2 = pts1 + tf.cast(jitter, tf.float64)
        grid_x, grid_y = _inverse_affine_maps(affine_from_points(pts1, pts2), grid_x, grid_y)
    out = remap(image, grid_x, grid_y)
    out.set_shape(image.shape)
    return out


# --------------------------------------------------------------------------------------------------------------
# op table, magnitude validation, search space
# --------------------------------------------------------------------------------------------------------------
class _OpDef(NamedTuple):
    fn: Callable[..., tf.Tensor]
    defaults: Mapping[str, Any]  # albumentations 0.1.8 constructor defaults
    kinds: Mapping[str, str]  # magnitude key -> validation kind (see _validate_value)


OPS: dict[str, _OpDef] = {
    "RandomContrast": _OpDef(random_contrast, {"limit": 0.2}, {"limit": "range"}),
    "RandomBrightness": _OpDef(random_brightness, {"limit": 0.2}, {"limit": "range"}),
    "RandomGamma": _OpDef(random_gamma, {"gamma_limit": (80, 120)}, {"gamma_limit": "percent_pair"}),
    "Blur": _OpDef(blur, {"blur_limit": 7}, {"blur_limit": "kernel"}),
    "MotionBlur": _OpDef(motion_blur, {"blur_limit": 7}, {"blur_limit": "kernel"}),
    "InvertImg": _OpDef(invert_img, {}, {}),
    "Rotate": _OpDef(rotate, {"limit": 90}, {"limit": "range"}),
    "ShiftScaleRotate": _OpDef(shift_scale_rotate, {"shift_limit": 0.0625, "scale_limit": 0.1, "rotate_limit": 45},
                               {"shift_limit": "range", "scale_limit": "scale_range", "rotate_limit": "range"}),
    "RandomScale": _OpDef(random_scale, {"scale_limit": 0.1}, {"scale_limit": "scale_range"}),
    "GridDistortion": _OpDef(grid_distortion, {"num_steps": 5, "distort_limit": 0.3},
                             {"num_steps": "positive_int", "distort_limit": "scale_range"}),
    "ElasticTransform": _OpDef(elastic_transform, {"alpha": 1, "sigma": 50, "alpha_affine": 50},
                               {"alpha": "nonnegative", "sigma": "positive", "alpha_affine": "nonnegative"}),
}
"""The 11 ops of pudae's ``POLICIES`` (teams.md §3.5): name -> (fn, 0.1.8 defaults, magnitude validation kinds)."""

OP_NAMES: tuple[str, ...] = tuple(OPS)
P_CHOICES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)  # teams.md §3.5: each op's p is drawn from these


class Uniform(NamedTuple):
    """A magnitude drawn uniformly from the real interval [lo, hi] (``random.uniform``)."""
    lo: float
    hi: float


class RandInt(NamedTuple):
    """A magnitude drawn uniformly from the integers lo..hi inclusive (``random.randint``)."""
    lo: int
    hi: int


SEARCH_SPACE: dict[str, dict[str, Any]] = {
    # teams.md §3.5 "Search space" table (pudae:transforms/policy_transform.py POLICIES); constants stay fixed
    "RandomContrast": {"limit": Uniform(0.1, 0.3)},
    "RandomBrightness": {"limit": Uniform(0.1, 0.3)},
    "RandomGamma": {"gamma_limit": (RandInt(70, 90), RandInt(110, 130))},
    "Blur": {"blur_limit": RandInt(3, 5)},
    "MotionBlur": {"blur_limit": RandInt(3, 5)},
    "InvertImg": {},
    "Rotate": {"limit": RandInt(5, 45)},
    "ShiftScaleRotate": {"shift_limit": Uniform(0.03, 0.12), "scale_limit": 0.0, "rotate_limit": 0},
    "RandomScale": {"scale_limit": Uniform(0.05, 0.20)},
    "GridDistortion": {"num_steps": RandInt(3, 5), "distort_limit": Uniform(0.1, 0.5)},
    "ElasticTransform": {"alpha": 1, "sigma": RandInt(30, 70), "alpha_affine": RandInt(30, 70)},
}


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _validate_value(kind: str, value):
    """Return the normalised value or raise ValueError with a sentence saying what is expected."""
    if kind in ("range", "scale_range"):
        if _is_number(value):
            if value < 0:
                raise ValueError(f"must be >= 0 (it means the range (-v, v)), got {value}")
            if kind == "scale_range" and value >= 1:
                raise ValueError(f"must be < 1 (factors 1 ± v must stay positive), got {value}")
            return value
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
            lo, hi = value
            if lo > hi:
                raise ValueError(f"a (lo, hi) pair needs lo <= hi, got {list(value)}")
            if kind == "scale_range" and lo <= -1:
                raise ValueError(f"needs lo > -1 (factors 1 + lo must stay positive), got {list(value)}")
            return (lo, hi)
        raise ValueError(f"must be a number or a [lo, hi] pair, got {value!r}")
    if kind == "percent_pair":
        if (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)
                and all(float(v).is_integer() for v in value)):
            lo, hi = (int(v) for v in value)
            if not 0 < lo <= hi:
                raise ValueError(f"needs 0 < lo <= hi (gamma in percent), got {list(value)}")
            return (lo, hi)
        raise ValueError(f"must be a [lo, hi] pair of integer percentages (e.g. [80, 120]), got {value!r}")
    if kind in ("kernel", "positive_int"):
        minimum = 3 if kind == "kernel" else 1
        if _is_number(value) and float(value).is_integer() and value >= minimum:
            return int(value)
        raise ValueError(f"must be an integer >= {minimum}, got {value!r}")
    if kind in ("positive", "nonnegative"):
        if _is_number(value) and (value > 0 if kind == "positive" else value >= 0):
            return value
        raise ValueError(f"must be a {'positive' if kind == 'positive' else 'non-negative'} number, got {value!r}")
    raise AssertionError(f"unknown magnitude kind {kind}")


def validate_magnitude(op_name: str, magnitude: Mapping[str, Any] | None, where: str = "") -> dict[str, Any]:
    """Check `op_name` and its magnitude dict; return the magnitudes (0.1.8 defaults filled in, pairs as tuples).

    Raises ConfigError naming `where` (e.g. "policy.json: sub_policies[3][1]") for an unknown op (with the closest
    names), an unknown magnitude key, or a value of the wrong type/range.
    """
    prefix = f"{where}: " if where else ""
    if op_name not in OPS:
        close = difflib.get_close_matches(str(op_name), OP_NAMES, n=3)
        hint = f"did you mean {close}? " if close else ""
        raise ConfigError(f"{prefix}unknown augmentation op {op_name!r}; {hint}known ops: {list(OP_NAMES)}")
    spec = OPS[op_name]
    magnitude = dict(magnitude or {})
    unknown = sorted(set(magnitude) - set(spec.kinds))
    if unknown:
        raise ConfigError(f"{prefix}{op_name} has no magnitude {unknown}; its magnitudes are {sorted(spec.kinds)}")
    out = {}
    for key, kind in spec.kinds.items():
        value = magnitude.get(key, spec.defaults[key])
        try:
            out[key] = _validate_value(kind, value)
        except ValueError as err:
            raise ConfigError(f"{prefix}{op_name} magnitude {key!r} {err}") from None
    return out


# --------------------------------------------------------------------------------------------------------------
# policies
# --------------------------------------------------------------------------------------------------------------
class PolicyOp(NamedTuple):
    """One op of a sub-policy: albumentations name, probability p in [0, 1], magnitude dict (validated)."""
    name: str
    p: float
    magnitude: Mapping[str, Any]


class SubPolicy(NamedTuple):
    """Two ops applied in order, each with its own probability (an albumentations ``Compose(op1, op2)``)."""
    first: PolicyOp
    second: PolicyOp


def apply_with_probability(op: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], p: float, seed
                           ) -> Callable[[tf.Tensor], tf.Tensor]:
    """Wrap ``op(image, seed) -> image`` so that it runs with probability `p` (albumentations' per-op ``p``).

    Returns ``f(image) -> image`` (same shape/dtype). `seed` (2,) int is split into the coin's seed and the op's
    seed; p == 0 and p == 1 are decided statically (no coin). Bind magnitudes first, e.g.
    ``apply_with_probability(functools.partial(rotate, limit=26), 0.75, seed)(image)``.
    """
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"probability p must be in [0, 1], got {p}")

    def wrapped(image):
        image = _check_image(image)
        if p == 0.0:
            return image
        coin_seed, op_seed = _split(seed, 2)
        if p == 1.0:
            return op(image, op_seed)
        apply = _uniform(coin_seed, 0.0, 1.0) < p
        return tf.cond(apply, lambda: op(image, op_seed), lambda: image)

    return wrapped


def base_d4(image, seed) -> tf.Tensor:
    """pudae's base transform: RandomRotate90, Flip, Transpose, each with p=0.5 (teams.md §3.5 step 1).

    Verified (0.1.x): RandomRotate90 = ``np.rot90(img, randint(0, 3))``; Flip = ``cv2.flip(img, d)`` with
    d ~ randint(-1, 1) (0 vertical, 1 horizontal, -1 both); Transpose swaps H and W. Not uniform over the 8 D4
    elements (as in the original). image (H, W, C) (square for a static shape), seed (2,) int -> same dtype.
    """
    image = _check_image(image)
    s = _split(seed, 5)

    def rot90(x, sd):
        return tf.image.rot90(x, k=_randint(sd, 0, 3))

    def flip(x, sd):
        d = _randint(sd, -1, 1)
        x = tf.cond(d <= 0, lambda: tf.reverse(x, axis=[0]), lambda: x)  # 0 and -1 flip rows
        return tf.cond(d != 0, lambda: tf.reverse(x, axis=[1]), lambda: x)  # 1 and -1 flip columns

    def transpose(x, sd):
        del sd
        return tf.transpose(x, [1, 0, 2])

    for op, sd in ((rot90, s[0]), (flip, s[1]), (transpose, s[2])):
        image = apply_with_probability(op, 0.5, sd)(image)
    return image


def _bound(policy_op: PolicyOp) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    fn = OPS[policy_op.name].fn
    magnitude = dict(policy_op.magnitude)
    return lambda image, seed: fn(image, seed, **magnitude)


def apply_sub_policy(image, sub_policy: SubPolicy, seed) -> tf.Tensor:
    """Apply a sub-policy's two ops in order, each with its own p. image (H, W, C), seed (2,) int -> same shape/dtype."""
    s = _split(seed, len(sub_policy))
    for policy_op, sd in zip(sub_policy, s):
        image = apply_with_probability(_bound(policy_op), policy_op.p, sd)(image)
    return image


def choose_sub_policy(seed, n: int) -> tf.Tensor:
    """int32 scalar index in [0, n), uniform (``random.choice`` over the sub-policies). seed (2,) int."""
    return _randint(_seed(seed), 0, int(n) - 1)


# apply_policy builds each op type ONCE per slot and feeds it the chosen sub-policy's magnitudes from a table, so
# the graph (and its tracing time) does not grow with the number of sub-policies. Each op's magnitudes are packed
# into a fixed-length float vector: name -> (pack: magnitude dict -> floats, unpack: (vector, bounds) -> kwargs).
_N_PARAMS = 6
_PACKING: dict[str, tuple[Callable[[Mapping], list], Callable[[tf.Tensor, Mapping], dict]]] = {
    "RandomContrast": (lambda m: [*_to_range(m["limit"])], lambda v, b: {"limit": v[0:2]}),
    "RandomBrightness": (lambda m: [*_to_range(m["limit"])], lambda v, b: {"limit": v[0:2]}),
    "RandomGamma": (lambda m: [*m["gamma_limit"]], lambda v, b: {"gamma_limit": v[0:2]}),
    "Blur": (lambda m: [m["blur_limit"]],
             lambda v, b: {"blur_limit": v[0], "max_blur_limit": b["blur_limit"]}),
    "MotionBlur": (lambda m: [m["blur_limit"]],
                   lambda v, b: {"blur_limit": v[0], "max_blur_limit": b["blur_limit"]}),
    "InvertImg": (lambda m: [], lambda v, b: {}),
    "Rotate": (lambda m: [*_to_range(m["limit"])], lambda v, b: {"limit": v[0:2]}),
    "ShiftScaleRotate": (
        lambda m: [*_to_range(m["shift_limit"]), *_to_range(m["scale_limit"]), *_to_range(m["rotate_limit"])],
        lambda v, b: {"shift_limit": v[0:2], "scale_limit": v[2:4], "rotate_limit": v[4:6]}),
    "RandomScale": (lambda m: [*_to_range(m["scale_limit"])], lambda v, b: {"scale_limit": v[0:2]}),
    "GridDistortion": (lambda m: [m["num_steps"], *_to_range(m["distort_limit"])],
                       lambda v, b: {"num_steps": v[0], "distort_limit": v[1:3], "max_num_steps": b["num_steps"]}),
    "ElasticTransform": (lambda m: [m["alpha"], m["sigma"], m["alpha_affine"]],
                         lambda v, b: {"alpha": v[0], "sigma": v[1], "alpha_affine": v[2]}),
}


def _run_packed(name: str, image, seed, vector, *, bounds: Mapping[str, int]) -> tf.Tensor:
    """Run op `name` with magnitudes unpacked from a (_N_PARAMS,) float32 `vector` (see `_PACKING`)."""
    out = OPS[name].fn(image, seed, **_PACKING[name][1](vector, bounds))
    out.set_shape(image.shape)
    return out


def apply_policy(image, policy: Sequence[SubPolicy], seed) -> tf.Tensor:
    """pudae's training augmentation: `base_d4`, then ONE sub-policy chosen uniformly, each op with its own p.

    image (H, W, C) uint8/float32 [0,255]; policy: list of `SubPolicy` (e.g. ``load_policy("team3")``; an empty
    list applies only the D4 base); seed (2,) int32/int64. Returns the same dtype (and shape for square images).
    Resize and normalisation (steps 3-4 of teams.md §3.5) are the pipeline's job.

    Equivalent to ``apply_sub_policy(base_d4(image, s_d4), policy[choose_sub_policy(s_choice, n)], s_ops)`` with
    ``s_d4, s_choice, s_ops = split(seed, 3)``, but the graph holds each op type once per slot (a `tf.switch_case`
    over op types, magnitudes gathered from a constant table), so tracing cost does not grow with the policy.
    """
    image = _check_image(image)
    d4_seed, choice_seed, op_seed = _split(seed, 3)
    image = base_d4(image, d4_seed)
    if not policy:
        return image
    policy = [SubPolicy(*(PolicyOp(op.name, float(op.p), validate_magnitude(op.name, op.magnitude, f"policy[{i}]"))
                          for op in sub)) for i, sub in enumerate(policy)]
    names = sorted({op.name for sub in policy for op in sub if op.p > 0}, key=OP_NAMES.index)
    if not names:
        return image
    # static bounds for ops whose magnitude fixes a static size
    bounds = {key: max([int(op.magnitude[key]) for sub in policy for op in sub if key in op.magnitude] or [3])
              for key in ("blur_limit", "num_steps")}
    op_ids, probs, params = [], [], []
    for sub in policy:
        op_ids.append([names.index(op.name) if op.p > 0 else 0 for op in sub])
        probs.append([float(op.p) for op in sub])
        params.append([(_PACKING[op.name][0](op.magnitude) + [0.0] * _N_PARAMS)[:_N_PARAMS] for op in sub])
    index = choose_sub_policy(choice_seed, len(policy))
    op_ids = tf.gather(tf.constant(op_ids, tf.int32), index)
    probs = tf.gather(tf.constant(probs, tf.float32), index)
    params = tf.gather(tf.constant(params, tf.float32), index)
    for slot, slot_seed in enumerate(_split(op_seed, 2)):
        coin_seed, seed_for_op = _split(slot_seed, 2)  # same derivation as apply_with_probability
        branches = [functools.partial(_run_packed, name, image, seed_for_op, params[slot], bounds=bounds)
                    for name in names]
        apply = _uniform(coin_seed, 0.0, 1.0) < probs[slot]
        static_shape = image.shape
        image = tf.cond(apply, lambda br=branches, i=op_ids[slot]: tf.switch_case(i, br), lambda x=image: x)
        image.set_shape(static_shape)
    return image


def _policy_op_from_json(entry, where: str) -> PolicyOp:
    if not isinstance(entry, Mapping) or "op" not in entry or "p" not in entry:
        raise ConfigError(f"{where}: expected an object {{\"op\": name, \"p\": probability, \"magnitude\": {{...}}}}, "
                          f"got {entry!r}")
    extra = sorted(set(entry) - {"op", "p", "magnitude"})
    if extra:
        raise ConfigError(f"{where}: unexpected keys {extra}; an op entry has only 'op', 'p', 'magnitude'")
    name, p = entry["op"], entry["p"]
    if not _is_number(p) or not 0.0 <= float(p) <= 1.0:
        raise ConfigError(f"{where} ({name}): p must be a number in [0, 1], got {p!r}")
    magnitude = entry.get("magnitude", {})
    if not isinstance(magnitude, Mapping):
        raise ConfigError(f"{where} ({name}): 'magnitude' must be an object, got {magnitude!r}")
    return PolicyOp(str(name), float(p), validate_magnitude(name, magnitude, where=f"{where} ({name})"))


def load_policy(path_or_name: str | os.PathLike = "team3") -> list[SubPolicy]:
    """Read and validate a policy JSON file (or a packaged name, e.g. ``"team3"``) -> list of `SubPolicy`.

    File format (`POLICY_FORMAT`): ``{"format": ..., "sub_policies": [[op, op], ...]}`` with each op
    ``{"op": name, "p": float, "magnitude": {...}}``. Errors (ConfigError) name the file and the entry
    (``sub_policies[i][j]``) and say what is expected.
    """
    from hpa_zoo.augment.policies import POLICY_FILES, policy_path

    if isinstance(path_or_name, str) and path_or_name in POLICY_FILES:
        path = policy_path(path_or_name)
    else:
        path = Path(path_or_name)
    if not path.is_file():
        raise ConfigError(f"policy file {path} not found; give a JSON policy path or one of the packaged names "
                          f"{sorted(POLICY_FILES)}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("sub_policies"), list):
        raise ConfigError(f"{path}: expected an object with a 'sub_policies' list (format {POLICY_FORMAT})")
    if doc.get("format", POLICY_FORMAT) != POLICY_FORMAT:
        raise ConfigError(f"{path}: unsupported format {doc.get('format')!r}; this version reads {POLICY_FORMAT}")
    policy = []
    for i, sub in enumerate(doc["sub_policies"]):
        where = f"{path}: sub_policies[{i}]"
        if not isinstance(sub, list) or len(sub) != 2:
            raise ConfigError(f"{where}: a sub-policy is a list of exactly 2 ops, got {sub!r}")
        policy.append(SubPolicy(*(_policy_op_from_json(e, f"{where}[{j}]") for j, e in enumerate(sub))))
    if not policy:
        raise ConfigError(f"{path}: 'sub_policies' is empty")
    return policy


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def save_policy(policy: Sequence[SubPolicy], path: str | os.PathLike, *, description: str = "") -> Path:
    """Write `policy` (list of `SubPolicy` or (op, op) pairs of `PolicyOp`) to `path` as JSON, atomically.

    Every op is validated first (ConfigError on a bad entry). Returns the path. `load_policy` reads it back.
    """
    subs = []
    for i, sub in enumerate(policy):
        ops = []
        for j, policy_op in enumerate(sub):
            policy_op = PolicyOp(*policy_op)
            where = f"policy[{i}][{j}]"
            if not 0.0 <= float(policy_op.p) <= 1.0:
                raise ConfigError(f"{where} ({policy_op.name}): p must be in [0, 1], got {policy_op.p}")
            magnitude = validate_magnitude(policy_op.name, policy_op.magnitude, where=where)
            ops.append({"op": policy_op.name, "p": float(policy_op.p),
                        "magnitude": {k: _jsonable(v) for k, v in magnitude.items()}})
        subs.append(ops)
    doc = {"format": POLICY_FORMAT, "description": description, "semantics": f"albumentations {ALBUMENTATIONS_VERSION}",
           "sub_policies": subs}
    return atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def _sample_value(spec, rng: np.random.Generator):
    if isinstance(spec, Uniform):
        return float(rng.uniform(spec.lo, spec.hi))
    if isinstance(spec, RandInt):
        return int(rng.integers(spec.lo, spec.hi + 1))
    if isinstance(spec, tuple):
        return tuple(_sample_value(s, rng) for s in spec)
    return spec


def sample_policy(rng: np.random.Generator | int | None, n_subpolicies: int = 5) -> list[SubPolicy]:
    """One random-search candidate (teams.md §3.5): `n_subpolicies` sub-policies of 2 DISTINCT ops from the 11.

    Each op's p is drawn from `P_CHOICES` = {0, .25, .5, .75}; magnitudes uniformly from `SEARCH_SPACE` (reals with
    ``uniform``, integers inclusive). rng: ``numpy.random.Generator`` or an int seed (same seed -> same policy).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    policy = []
    for _ in range(int(n_subpolicies)):
        ops = []
        for index in rng.choice(len(OP_NAMES), size=2, replace=False):
            name = OP_NAMES[int(index)]
            magnitude = {key: _sample_value(spec, rng) for key, spec in SEARCH_SPACE[name].items()}
            p = float(P_CHOICES[int(rng.integers(len(P_CHOICES)))])
            ops.append(PolicyOp(name, p, validate_magnitude(name, magnitude)))
        policy.append(SubPolicy(*ops))
    return policy
