"""The RGB + Y JPEG storage of an RGBY image: the `tfds_hpa` default since builder version 2.0.0.

An (H, W, 4) uint8 R, G, B, Y image is stored as two JPEG files, quality `JPEG_QUALITY`: the R, G, B stains as one
colour JPEG **without chroma subsampling** (4:4:4; OpenCV's default 4:2:0 blurs the stains into each other, max
error 81 grey levels) and Y as a grayscale JPEG. On the real HPA fields it is 1.6x smaller than the 4-channel PNG at
512 (2.6x at 1536) and decodes fast enough for Team 1's 1536 -> 1024 training path on one core, because
``tf.image.decode_and_crop_jpeg`` decodes only the random-scale crop window (`decode_rgby_jpeg` with ``window``);
figures in benchmarks/README.md (``input_pipeline.py``). The price is a small pixel error, bounded by
`MEAN_ABS_ERROR_BOUND` / `MAX_ABS_ERROR_BOUND` (tests/test_rgby_jpeg.py checks them on the real fields).

A TFDS example read without decoding its image (`hpa_zoo.data.sources.tfds_dataset` with ``decode_image=False``)
holds the stored pair under `ENCODED_KEY` instead of ``image``; a recipe whose ``train_map_reads_jpeg`` is set
decodes it itself.
"""
from __future__ import annotations

import cv2
import numpy as np
import tensorflow as tf

from hpa_zoo.errors import HpaDataError

#: JPEG quality of both files (libjpeg scale 0-100).
JPEG_QUALITY = 95
#: libjpeg's accurate integer inverse DCT: the encoder's own (OpenCV), so lower error than TF's default fast one
#: (mean 0.66 against 0.80 grey levels at 1536) at no measurable cost.
DCT_METHOD = "INTEGER_ACCURATE"
#: The name a storage-aware TFDS feature gives this storage (its ``storage`` attribute).
STORAGE = "rgby_jpeg"
#: Example key of the undecoded pair: a (2,) tf.string tensor ``[RGB JPEG, Y JPEG]``.
ENCODED_KEY = "image_rgby_jpeg"
#: Documented bounds of |decoded - original| in grey levels, per real HPA field (measured on the three real samples
#: of ../shared/data: at 512, Kaggle's own pixels, mean 1.16-1.86 and max 29 per image; upsampled to 1536, mean
#: 0.54-0.87 and max 18; README.md "TFDS storage").
MEAN_ABS_ERROR_BOUND = 2.5
MAX_ABS_ERROR_BOUND = 32


def encode_rgby_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> list[bytes]:
    """Encode one RGBY image as ``[RGB JPEG bytes, Y JPEG bytes]`` (4:4:4, no chroma subsampling).

    Args:
        image: (H, W, 4) uint8, channels R, G, B, Y.
        quality: JPEG quality 1..100.
    Returns:
        Two ``bytes``: the baseline JPEG of the R, G, B channels and the grayscale JPEG of Y.
    Raises:
        HpaDataError: ``image`` is not (H, W, 4) uint8, or OpenCV cannot encode it.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 4 or image.dtype != np.uint8:
        raise HpaDataError(f"encode_rgby_jpeg: got an image of shape {image.shape} and dtype {image.dtype}; it needs "
                           f"(H, W, 4) uint8 R, G, B, Y")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality),
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    parts = []
    for plane in (np.ascontiguousarray(image[..., [2, 1, 0]]), np.ascontiguousarray(image[..., 3])):  # OpenCV: BGR
        ok, buf = cv2.imencode(".jpg", plane, params)
        if not ok:
            raise HpaDataError(f"encode_rgby_jpeg: OpenCV could not encode a {image.shape} image as JPEG")
        parts.append(buf.tobytes())
    return parts


def decode_rgb_y(parts: tf.Tensor, window: tuple[tf.Tensor, tf.Tensor, tf.Tensor] | None = None
                 ) -> list[tf.Tensor]:
    """Decode a stored pair to its two planes, not yet joined: ``[rgb (H, W, 3), y (H, W, 1)]`` uint8, or
    (side, side, .) for a ``window`` (see `decode_rgby_jpeg`). For a map that resizes next:
    `hpa_zoo.data.cv_ops.merge_resize` joins and resizes them in one step."""
    parts = tf.convert_to_tensor(parts, tf.string)

    def jpeg(data, channels):
        if window is None:
            return tf.io.decode_jpeg(data, channels=channels, dct_method=DCT_METHOD)
        top, left, side = window
        return tf.image.decode_and_crop_jpeg(data, tf.stack([top, left, side, side]), channels=channels,
                                             dct_method=DCT_METHOD)

    return [jpeg(parts[0], 3), jpeg(parts[1], 1)]


def decode_rgby_jpeg(parts: tf.Tensor, window: tuple[tf.Tensor, tf.Tensor, tf.Tensor] | None = None) -> tf.Tensor:
    """Decode a stored pair back to RGBY, the whole image or only a square window (graph op; tf.data-safe).

    Args:
        parts: (2,) tf.string, ``[RGB JPEG, Y JPEG]`` as `encode_rgby_jpeg` writes them.
        window: None (the whole image) or ``(top, left, side)`` int32 scalars, e.g.
            `hpa_zoo.data.image_ops.random_scale_crop_box`: only that square is decoded
            (``tf.image.decode_and_crop_jpeg``), with the same pixels as decoding all and slicing.
    Returns:
        (H, W, 4) uint8 R, G, B, Y, or (side, side, 4) for a window.
    """
    return tf.concat(decode_rgb_y(parts, window), axis=-1)


def stored_shape(parts: tf.Tensor) -> tf.Tensor:
    """(2,) int32 (H, W) of a stored pair, read from the RGB JPEG's header (nothing is decoded)."""
    return tf.image.extract_jpeg_shape(tf.convert_to_tensor(parts, tf.string)[0])[:2]


def checked_stored_shape(parts: tf.Tensor, side: int, caller: str) -> tf.Tensor:
    """`stored_shape`, asserted to be ``side`` square (a recipe map reading the pair undecoded needs the image
    stored at its ``image_size``): (2,) int32 (H, W); the assertion fails naming ``caller`` and ``side``."""
    hw = stored_shape(parts)
    check = tf.debugging.assert_equal(hw, side, message=f"{caller}: the stored JPEG must be {side} px square (the "
                                                        f"recipe's image_size) to be read undecoded")
    with tf.control_dependencies([check]):
        return tf.identity(hw)


def decoded(example: dict) -> dict:
    """``example`` with its image decoded: an `ENCODED_KEY` entry becomes ``image`` (H, W, 4) uint8; an example
    that already holds ``image`` is returned as it is."""
    if ENCODED_KEY not in example:
        return example
    out = {k: v for k, v in example.items() if k != ENCODED_KEY}
    out["image"] = decode_rgby_jpeg(example[ENCODED_KEY])
    return out
