"""Per-image tf ops, the building blocks of every recipe's data maps (docs/ARCHITECTURE.md, "Pinned interfaces").

Every op works on ONE image tensor (H, W, C) for any channel count C (RGBY, RGB, a single stain) and is built from
tf ops only, so it runs inside ``Dataset.map`` without Python per example. Random ops are *stateless*: they take a
``seed`` (2,) int32/int64 tensor and give the same output for the same seed."""
from __future__ import annotations


import tensorflow as tf

from hpa_zoo.constants import CHANNELS, D4_ORDER
from hpa_zoo.errors import ConfigError

_D4_FLAGS: tuple[tuple[bool, bool, bool], ...] = tuple(
    ("flipud" in name, "fliplr" in name, "transpose" in name) for name in D4_ORDER
)


#: ImageNet statistics in [0, 1] units, used with RGB-only inputs by Team 2 (teams.md §2.2).
IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


#: Team 3's ResNet34 normalisation (x - 127.5) / 255 (teams.md §3.4) as mean/std in [0, 1] units:
#: ``normalize_mean_std(image, *RESNET34_MEAN_STD)``.
RESNET34_MEAN_STD = (0.5, 1.0)


def to_float(image: tf.Tensor) -> tf.Tensor:
    """Cast to float32 without rescaling: (H, W, C) any dtype -> (H, W, C) float32, values unchanged."""
    return tf.cast(image, tf.float32)


def _size_hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _cast_like(resized: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """float32 -> `dtype`, rounding and clipping to the range of integer dtypes."""
    if dtype.is_integer:
        return tf.cast(tf.clip_by_value(tf.round(resized), dtype.min, dtype.max), dtype)
    return tf.cast(resized, dtype)


def resize(image: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
    """Bilinear resize of one image (cv2 INTER_LINEAR-like, half-pixel centres, no antialias).

    Args:
        image: (H, W, C), any C, uint8/uint16/float.
        size: output side (square) or (height, width).
    Returns:
        (h, w, C), same dtype as `image` (integers are rounded and clipped); an image that already is (h, w) is
        returned as it is (what the bilinear resize would give, without its cost: 9.7 ms for a 1536 px RGBY image).
    """
    h, w = _size_hw(size)
    image = tf.convert_to_tensor(image)

    def resized():
        return _cast_like(tf.image.resize(image, (h, w), method="bilinear"), image.dtype)

    static = image.shape[:2] if image.shape.rank == 3 else None
    if static is not None and static.is_fully_defined():
        return image if tuple(static) == (h, w) else resized()
    shape = tf.shape(image)
    out = tf.cond(tf.logical_and(tf.equal(shape[0], h), tf.equal(shape[1], w)), lambda: image, resized)
    return tf.ensure_shape(out, [h, w, image.shape[-1] if image.shape.rank == 3 else None])


def rescale_to_model(image: tf.Tensor, size: int, scale: float) -> tf.Tensor:
    """Rescale by ``scale`` (user µm per pixel / model µm per pixel), then centre-pad (black) or centre-crop to
    ``size`` x ``size``: the graph form of `hpa_zoo.data.images.fit_to_model` with pixel sizes.

    image (H, W, C) any dtype -> (size, size, C) same dtype."""
    hw = tf.cast(tf.shape(image)[:2], tf.float32) * float(scale)
    hw = tf.maximum(tf.cast(tf.round(hw), tf.int32), 1)
    image = tf.convert_to_tensor(image)
    scaled = _cast_like(tf.image.resize(image, hw, method="area" if scale < 1 else "bilinear"), image.dtype)
    return tf.image.resize_with_crop_or_pad(scaled, size, size)


def center_resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Largest centred square, resized to (size, size): Team 1's validation / no-crop path (teams.md §1.4).

    A square image is simply resized whole.

    Args:
        image: (H, W, C), any C and dtype.
        size: output side.
    Returns:
        (size, size, C), same dtype as `image`.
    """
    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1])
    top = (shape[0] - side) // 2
    left = (shape[1] - side) // 2
    return resize(image[top:top + side, left:left + side], size)


def random_scale_crop(image: tf.Tensor, crop_size: int, seed: tf.Tensor) -> tf.Tensor:
    """Team 1's random-scale crop (teams.md §1.4): side s ~ U{crop, min(H, W)}, uniform position, resize to crop.

    The integer side s is uniform over ``crop_size .. min(H, W)`` inclusive (if the image is smaller than
    `crop_size`, s = min(H, W) and the crop is upsampled). The top-left corner is uniform over all positions
    that keep the square inside the image.

    Args:
        image: (H, W, C), any C and dtype.
        crop_size: output side.
        seed: (2,) int32/int64, for `tf.random.stateless_uniform`.
    Returns:
        (crop_size, crop_size, C), same dtype as `image`.
    """
    top, left, side = random_scale_crop_box(tf.shape(image)[:2], crop_size, seed)
    return resize(image[top:top + side, left:left + side], crop_size)


def random_scale_crop_box(hw: tf.Tensor, crop_size: int, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The (top, left, side) int32 scalars of `random_scale_crop`'s square for an image of shape ``hw`` (2,), so a
    decoder can read only that window (``tf.image.decode_and_crop_jpeg``) and get the same crop."""
    s_side, s_top, s_left = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    hw = tf.cast(hw, tf.int32)
    max_side = tf.minimum(hw[0], hw[1])
    min_side = tf.minimum(crop_size, max_side)
    side = tf.random.stateless_uniform([], s_side, min_side, max_side + 1, dtype=tf.int32)
    top = tf.random.stateless_uniform([], s_top, 0, hw[0] - side + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], s_left, 0, hw[1] - side + 1, dtype=tf.int32)
    return top, left, side


def five_crop(image: tf.Tensor, crop_size: int) -> tf.Tensor:
    """The 5 fixed crops ul, ur, center, bl, br of Team 4 (teams.md §4.2; torchvision ``FiveCrop`` order).

    The centre crop starts at ``round((H - crop) / 2)`` (half to even), as torchvision's ``center_crop``.

    Args:
        image: (H, W, C) with H, W >= crop_size; any C and dtype.
        crop_size: side of each crop.
    Returns:
        (5, crop_size, crop_size, C), same dtype, order (upper-left, upper-right, center, bottom-left,
        bottom-right).
    """
    c = crop_size
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    tf.debugging.assert_greater_equal(tf.minimum(h, w), c, message=f"five_crop: image smaller than crop {c}")
    top = tf.cast(tf.round(tf.cast(h - c, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(w - c, tf.float32) / 2.0), tf.int32)
    crops = [
        image[:c, :c],
        image[:c, w - c:],
        image[top:top + c, left:left + c],
        image[h - c:, :c],
        image[h - c:, w - c:],
    ]
    out = tf.stack(crops, axis=0)
    return tf.ensure_shape(out, [5, c, c, image.shape[-1]])


#: Unsigned integer of each pixel's byte width (all its channels together), for moving whole pixels at once.
_PIXEL_WORDS = {2: tf.uint16, 4: tf.uint32, 8: tf.uint64}


def _d4_static(image: tf.Tensor, k: int) -> tf.Tensor:
    flip_ud, flip_lr, transpose = _D4_FLAGS[k]
    if not (flip_ud or flip_lr or transpose):
        return image
    image = tf.convert_to_tensor(image)
    channels = image.shape[-1] if image.shape.rank == 3 else None
    word = _PIXEL_WORDS.get(channels * image.dtype.size) if channels and channels > 1 else None
    # An RGBY uint8 pixel is 4 bytes: moved as one uint32 (a bitcast, so bit-exact), the flips and the transpose
    # run ~4x faster on one core than on the (H, W, 4) bytes (benchmarks/README.md, P2).
    pixels = tf.bitcast(image, word) if word is not None else image
    if flip_ud:
        pixels = tf.reverse(pixels, axis=[0])
    if flip_lr:
        pixels = tf.reverse(pixels, axis=[1])
    if transpose:
        pixels = tf.transpose(pixels, perm=[1, 0] if word is not None else [1, 0, 2])
    return tf.bitcast(pixels, image.dtype) if word is not None else pixels


def d4_transform(image: tf.Tensor, k) -> tf.Tensor:
    """Dihedral transform number `k` of `D4_ORDER` (Team 1's 8 augments, teams.md §1.4).

    Args:
        image: (H, W, C), any C and dtype.
        k: Python int or scalar int tensor in 0..7.
    Returns:
        (H, W, C) for k in 0, 1, 2, 4, else (W, H, C); same dtype. With a tensor `k` and H != W the static
        spatial shape is unknown.
    """
    if isinstance(k, int):
        if not 0 <= k < len(D4_ORDER):
            raise ConfigError(f"d4_transform: k={k} is not in 0..7; the transforms are {D4_ORDER}")
        return _d4_static(image, k)
    branches = [lambda i=i: _d4_static(image, i) for i in range(len(D4_ORDER))]
    return tf.switch_case(tf.cast(k, tf.int32), branches)


def random_d4(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One of the 8 dihedral transforms, uniformly at random (Team 1's only augmentation, teams.md §1.4).

    Args:
        image: (H, W, C), any C and dtype.
        seed: (2,) int32/int64.
    Returns:
        Same shape (square images) and dtype as `image`.
    """
    k = tf.random.stateless_uniform([], seed, 0, len(D4_ORDER), dtype=tf.int32)
    out = d4_transform(image, k)
    if image.shape[0] is not None and image.shape[0] == image.shape[1]:
        out = tf.ensure_shape(out, image.shape)
    return out


def normalize_mean_std(image: tf.Tensor, mean, std) -> tf.Tensor:
    """``(x / 255 - mean) / std`` per channel (mean/std in [0, 1] units, e.g. `IMAGENET_MEAN`, teams.md §2.2).

    Args:
        image: (H, W, C) in [0, 255], any dtype.
        mean, std: scalars or length-C sequences.
    Returns:
        (H, W, C) float32.
    """
    x = to_float(image) / 255.0
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def per_image_standardize(image: tf.Tensor, eps: float = 1e-7) -> tf.Tensor:
    """Team 3's per-image, per-channel z-score ``(x - mean_c) / (std_c + eps)`` over H x W (teams.md §3.4).

    std is the population standard deviation (NumPy ``np.std``, ddof=0).

    Args:
        image: (H, W, C), any dtype.
        eps: added to the standard deviation.
    Returns:
        (H, W, C) float32, each channel with mean ~0 and std ~1 (0 for a constant channel).
    """
    x = to_float(image)
    mean, var = tf.nn.moments(x, axes=[0, 1], keepdims=True)
    return (x - mean) / (tf.sqrt(var) + eps)


def rgb_only(image: tf.Tensor) -> tf.Tensor:
    """Drop the yellow stain: (H, W, 4) R,G,B,Y -> (H, W, 3) R,G,B (Team 2, teams.md §2.2). Same dtype.

    Raises:
        ConfigError: the static channel count is known and is not 4.
    """
    channels = image.shape[-1]
    if channels is not None and channels != len(CHANNELS):
        raise ConfigError(f"rgb_only expects {len(CHANNELS)} channels {CHANNELS}, got {channels}; "
                          f"apply it to the RGBY image before any channel selection")
    return image[..., :3]


def resized_pair(example: dict, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The deterministic validation path most recipes share: the whole image resized to ``size``.

    Args:
        example: ``{"image": uint8 (H, W, C), "multi_hot": uint8 (28,), ...}``.
        size: output side.
    Returns:
        (image float32 (size, size, C) in [0, 255], multi_hot float32 (28,)).
    """
    return tf.cast(resize(example["image"], size), tf.float32), tf.cast(example["multi_hot"], tf.float32)
