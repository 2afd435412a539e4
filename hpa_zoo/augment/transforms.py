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

import math
import numbers

import tensorflow as tf

from hpa_zoo.errors import ConfigError

ALBUMENTATIONS_VERSION = "0.1.8"  # pudae:requirements.txt
MAX_VALUE = 255.0  # uint8 range; float32 images are in [0, 255] (docs/ARCHITECTURE.md)

__all__ = [
    "random_contrast", "random_brightness", "random_gamma", "blur", "motion_blur", "invert_img", "rotate",
    "shift_scale_rotate", "random_scale", "grid_distortion", "elastic_transform",
    "adjust_brightness_contrast", "gamma_transform", "box_blur", "filter2d", "motion_blur_kernel",
    "rotation_matrix", "affine_from_points", "warp_affine", "remap", "grid_distortion_maps", "gaussian_filter",
    "check_image", "as_seed", "split_seed", "uniform", "randint", "to_range",
]


# --------------------------------------------------------------------------------------------------------------
# small helpers: dtype, seeds, albumentations-style ranges
# --------------------------------------------------------------------------------------------------------------
def check_image(image) -> tf.Tensor:
    """The image as a tensor, checked: ONE image (H, W, C), uint8 or float32 in [0, 255] (`ConfigError` else)."""
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


def as_seed(seed) -> tf.Tensor:
    """A stateless RNG seed as a (2,) int32/int64 tensor (other dtypes cast to int64; another shape: `ConfigError`)."""
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    if seed.shape.rank is not None and seed.shape.as_list() != [2]:
        raise ConfigError(f"seed must be a (2,) int tensor (stateless RNG seed), got shape {seed.shape}")
    return seed


def split_seed(seed, n: int) -> list[tf.Tensor]:
    """`n` independent (2,) seeds derived from `seed`."""
    seeds = tf.random.experimental.stateless_split(as_seed(seed), num=n)
    return [seeds[i] for i in range(n)]


def uniform(seed, lo, hi, shape=(), dtype=tf.float32) -> tf.Tensor:
    """U[lo, hi) in `dtype` (exactly lo when lo == hi); lo, hi python floats or float tensors."""
    lo, hi = tf.cast(lo, dtype), tf.cast(hi, dtype)
    return tf.random.stateless_uniform(shape, seed=seed, minval=lo, maxval=hi, dtype=dtype)


def _as_int(value) -> tf.Tensor:
    """int32 scalar from a python int or an (integer-valued) numeric tensor."""
    return tf.cast(tf.round(tf.cast(value, tf.float64)), tf.int32)


def randint(seed, lo, hi) -> tf.Tensor:
    """int32 uniform on {lo, ..., hi} inclusive (Python ``random.randint``); bounds python ints or int tensors."""
    lo, hi = _as_int(lo), _as_int(hi)
    return tf.random.stateless_uniform((), seed=seed, minval=lo, maxval=hi + 1, dtype=tf.int32)


def _is_tensor(value) -> bool:
    return tf.is_tensor(value) or (isinstance(value, (list, tuple)) and any(tf.is_tensor(v) for v in value))


def to_range(value, bias: float = 0.0):
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
    image = check_image(image)
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
    lo, hi = to_range(limit)
    return adjust_brightness_contrast(image, 1.0 + uniform(as_seed(seed), lo, hi), 0.0)


def random_brightness(image, seed, limit=0.2, *, beta_by_max: bool = False) -> tf.Tensor:
    """RandomBrightness(limit): ``clip(x + β·mean(x))``, β ~ U(-l, l).

    Verified (0.1.x ``brightness_contrast_adjust``: ``img·alpha + beta·np.mean(img)`` with alpha=1): the shift is
    relative to the image mean (all channels together), e.g. a mid-grey 128 image with β=0.2 becomes 153.6
    (uint8: 153). teams.md §3.5 describes the later ``x + 255·β`` form; pass ``beta_by_max=True`` for it.
    limit: float l >= 0 or (lo, hi). image (H, W, C) uint8/float32, seed (2,) int -> same shape/dtype.
    """
    lo, hi = to_range(limit)
    return adjust_brightness_contrast(image, 1.0, uniform(as_seed(seed), lo, hi), beta_by_max=beta_by_max)


def gamma_transform(image, gamma) -> tf.Tensor:
    """albumentations 0.1.8 ``gamma_transform`` (uint8 path): ``255·(x/255)**(1/gamma)``.

    Verified: the 0.1.x uint8 path builds a LUT with ``invGamma = 1/gamma`` and truncates it to uint8; we apply the
    same LUT (computed in float64) to uint8 images. Its float path used ``x**gamma`` on [0,1] images, which is
    inconsistent; pudae's images were uint8, so float32 [0,255] inputs here get the uint8 formula without rounding.
    image (H, W, C) uint8/float32, gamma: positive float scalar -> same shape/dtype.
    """
    image = check_image(image)
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
    gamma = tf.cast(randint(as_seed(seed), gamma_limit[0], gamma_limit[1]), tf.float64) / 100.0
    return gamma_transform(image, gamma)


def invert_img(image, seed=None) -> tf.Tensor:
    """InvertImg: ``255 - x`` (verified: 0.1.x ``invert(img) = 255 - img``). `seed` is ignored (deterministic).

    image (H, W, C) uint8 or float32 in [0, 255] (255 is this project's float maximum) -> same shape/dtype.
    """
    del seed
    image = check_image(image)
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
    image = check_image(image)
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
    return 3 + 2 * randint(seed, 0, n_sizes - 1), frame


def blur(image, seed, blur_limit=7, *, max_blur_limit: int | None = None) -> tf.Tensor:
    """Blur(blur_limit): box blur with a random ODD kernel size k in {3, 5, ..., blur_limit}, uniform.

    Verified: 0.1.x ``Blur.get_params`` = ``random.choice(np.arange(3, blur_limit + 1, 2))`` (odd sizes only, so
    blur_limit=4 always gives k=3) and ``F.blur = cv2.blur(img, (k, k))`` (box, reflect-101). For an explicit even
    kernel use `box_blur`. image (H, W, C) uint8/float32, seed (2,) int -> same shape/dtype. blur_limit may be an
    int tensor when the python bound `max_blur_limit` is given (used by `apply_policy`).
    """
    k, frame = _kernel_size(as_seed(seed), blur_limit, max_blur_limit)
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
    s = split_seed(seed, 6)
    k, frame = _kernel_size(s[0], blur_limit, max_blur_limit)
    kmax = tf.cast(k, tf.float32)

    def draw(sd):  # randint(0, k-1) with a tensor k
        return tf.cast(tf.floor(uniform(sd, 0.0, 1.0) * kmax), tf.int32)

    xs, xe = draw(s[1]), draw(s[2])
    ys_free, ye_free = draw(s[3]), draw(s[4])
    # random.sample(range(k), 2): first uniform, second uniform among the other k-1 values
    ys_pair = ys_free
    other = tf.cast(tf.floor(uniform(s[5], 0.0, 1.0) * (kmax - 1.0)), tf.int32)
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
    image = check_image(image)
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
    image = check_image(image)
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
    image = check_image(image)
    lo, hi = to_range(limit)
    angle = uniform(as_seed(seed), lo, hi)
    return warp_affine(image, rotation_matrix(_center(image), angle, 1.0))


def shift_scale_rotate(image, seed, shift_limit=0.0625, scale_limit=0.1, rotate_limit=45) -> tf.Tensor:
    """ShiftScaleRotate: affine about (W/2, H/2) with angle ~ U(±rotate_limit)°, scale ~ U(1 ± scale_limit),
    shift dx, dy ~ U(±shift_limit) as fractions of W and H (independent), bilinear, reflect-101.

    Verified (0.1.x): ``M = getRotationMatrix2D(center, angle, scale); M[0,2] += dx·W; M[1,2] += dy·H``;
    ``scale_limit`` goes through ``to_tuple(scale_limit, bias=1.0)``. pudae's policy uses scale 0, rotate 0.
    Each limit: a float or a (lo, hi) pair. image (H, W, C), seed (2,) int -> same shape/dtype.
    """
    image = check_image(image)
    s = split_seed(seed, 4)
    angle = uniform(s[0], *to_range(rotate_limit))
    scale = uniform(s[1], *to_range(scale_limit, bias=1.0))
    lo, hi = to_range(shift_limit)
    dx, dy = uniform(s[2], lo, hi), uniform(s[3], lo, hi)
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
    image = check_image(image)
    lo, hi = to_range(scale_limit, bias=1.0)
    scale = uniform(as_seed(seed), lo, hi, dtype=tf.float64)  # float64 like python's int(height * scale)
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
    image = check_image(image)
    if max_num_steps is None:
        if _is_tensor(num_steps):
            raise ConfigError("a tensor num_steps needs max_num_steps (a python int bound)")
        max_num_steps = num_steps
    lo, hi = to_range(distort_limit)
    s = split_seed(seed, 2)
    steps_x = 1.0 + uniform(s[0], lo, hi, shape=(int(max_num_steps) + 1,))
    steps_y = 1.0 + uniform(s[1], lo, hi, shape=(int(max_num_steps) + 1,))
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
    image = check_image(image)
    s = split_seed(seed, 3)
    h, w = _hw(image)
    grid_x, grid_y = _pixel_grid(h, w)
    if _is_tensor(alpha) or float(alpha) != 0.0:
        alpha = tf.cast(alpha, tf.float64)
        noise_x = uniform(s[1], -1.0, 1.0, shape=tf.stack([h, w]))
        noise_y = uniform(s[2], -1.0, 1.0, shape=tf.stack([h, w]))
        grid_x = grid_x + gaussian_filter(noise_x, sigma) * alpha
        grid_y = grid_y + gaussian_filter(noise_y, sigma) * alpha
    if _is_tensor(alpha_affine) or float(alpha_affine) != 0.0:
        cx = tf.cast(w // 2, tf.float64)
        cy = tf.cast(h // 2, tf.float64)
        half = tf.cast(tf.minimum(h, w) // 3, tf.float64)
        pts1 = tf.stack([tf.stack([cx + half, cy + half]), tf.stack([cx + half, cy - half]),
                         tf.stack([cx - half, cy - half])])
        jitter = uniform(s[0], -tf.cast(alpha_affine, tf.float32), alpha_affine, shape=(3, 2))
        pts2 = pts1 + tf.cast(jitter, tf.float64)
        grid_x, grid_y = _inverse_affine_maps(affine_from_points(pts1, pts2), grid_x, grid_y)
    out = remap(image, grid_x, grid_y)
    out.set_shape(image.shape)
    return out


# --------------------------------------------------------------------------------------------------------------
# op table, magnitude validation, search space
# --------------------------------------------------------------------------------------------------------------


"""The 11 ops of pudae's ``POLICIES`` (teams.md §3.5): name -> (fn, 0.1.8 defaults, magnitude validation kinds)."""


# --------------------------------------------------------------------------------------------------------------
# policies
# --------------------------------------------------------------------------------------------------------------


# apply_policy builds each op type ONCE per slot and feeds it the chosen sub-policy's magnitudes from a table, so
# the graph (and its tracing time) does not grow with the number of sub-policies. Each op's magnitudes are packed
# into a fixed-length float vector: name -> (pack: magnitude dict -> floats, unpack: (vector, bounds) -> kwargs).


