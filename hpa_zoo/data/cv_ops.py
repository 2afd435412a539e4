"""OpenCV inside a tf.data map (``tf.numpy_function``): the host training path's join-and-resize, where TensorFlow's
own kernels cost more CPU than decoding the image.

Why (one core, one (1280, 1280) crop window to 1024, benchmarks/README.md "input_pipeline.py"):

* joining the decoded RGB and Y planes into RGBY: ``tf.concat`` on the last axis copies 3 bytes and then 1 byte per
  pixel, 8.4 ms; ``cv2.merge`` 1.6 ms;
* bilinear resize of the uint8 RGBY crop: ``tf.image.resize`` 9-11 ms plus 3.7 ms to round back to uint8;
  ``cv2.resize`` (SIMD) 1.8 ms with its uint8 kernel, which rounds low; the 16-bit route used instead (Numerics,
  below) adds a widening and a narrowing copy, ~20 % more for the join and resize together.

What it costs: the Python function runs under the GIL. Alone it adds ~0.3 ms a call to OpenCV's own work (the
argument and result conversion), and it gives the GIL up inside each of its two OpenCV calls. Beside a thread that
keeps the GIL busy (pure-Python CPU work in the same process), each take-back of the GIL waits up to
``sys.getswitchinterval()`` (5 ms): one (1280, 1280) crop then took 22.7 ms instead of 6.0, and Team 1's whole host
path on one core fell from 41.9 to 23.8 images/s (the all-TensorFlow path it replaced: 25.9 either way;
benchmarks/README.md). A training loop waits on its step and holds the GIL little; do not run CPU-bound Python
threads beside a training that needs its input rate. The op cannot be saved in a SavedModel or run by the tf.data
service, so it is for host *training* maps; serving graphs keep `hpa_zoo.data.image_ops` (tf ops only).

Numerics: ``cv2.INTER_LINEAR`` (the team's own resize, docs/teams.md §1.4) samples with half-pixel centres like
`hpa_zoo.data.image_ops.resize`. Its uint8 kernel is *not* used on uint8 images: its SIMD vertical pass (OpenCV's
imgproc/src/resize.cpp, ``VResizeLinearVec_32s8u``: ``v_shr<4>`` then ``v_mul_hi``) truncates the low
bits of the 11-bit fixed-point sums before rounding, so values come out low by up to 0.75 grey levels, about -0.11
on average (on the dark, Poisson-like planes of fluorescence images ~9 % of all pixels are one grey level darker
than the exact bilinear value rounded). Training crops would then be darker than the evaluation images, which
`image_ops.resize` rounds correctly (train and validation brightness must match), and than what the all-TensorFlow
path gave before this module. So uint8 images are resized through OpenCV's 16-bit path
(``astype(uint16)`` + resize + ``astype(uint8)``), which interpolates in floating point and rounds to nearest:
within 0.5 of the exact value, unbiased, and equal to ``image_ops.resize`` except on exact ties. It costs ~1.4 ms
more per (1280, 1280) RGBY window (3.0 ms merge + 1.0 widen + 3.0 resize + 0.4 narrow, against 3.0 + 3.3, on a
machine state about half as fast as the figures above).
uint16 and float32 images are resized in their own dtype (both round or stay exact). ``INTER_LINEAR_EXACT`` on
uint8 is no better: about as fast, but off by up to 1.35 grey levels when enlarging. OpenCV's own thread pool is
left as the process has it; concurrent calls from tf.data's threads run each resize on its caller's thread.
"""
from __future__ import annotations

import functools
from typing import Sequence

import cv2
import numpy as np
import tensorflow as tf

from hpa_zoo.errors import ConfigError

#: dtypes ``cv2.resize`` handles natively (others would be converted; refused instead).
DTYPES = (tf.uint8, tf.uint16, tf.float32)


def _merge_resize_np(height: int, width: int, *planes: np.ndarray) -> np.ndarray:
    image = planes[0] if len(planes) == 1 else cv2.merge(list(planes))
    narrow = image.dtype == np.uint8
    if narrow:  # OpenCV's uint8 kernel rounds low (module docstring); its uint16 kernel rounds to nearest
        image = image.astype(np.uint16)
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if narrow:
        out = out.astype(np.uint8)  # values are 0..255 already: exact
    return out.reshape(out.shape[:2] + (image.shape[-1] if image.ndim == 3 else 1,))


def merge_resize(parts: Sequence[tf.Tensor], size: int | tuple[int, int]) -> tf.Tensor:
    """``resize(concat(parts, axis=-1), size)`` in one OpenCV call pair (``cv2.merge`` + ``cv2.resize`` bilinear).

    Args:
        parts: one or more (H, W, C_i) tensors with the same H, W and dtype (uint8, uint16 or float32) and static
            channel counts C_i, e.g. ``[rgb (H, W, 3), y (H, W, 1)]`` from `hpa_zoo.data.rgby_jpeg.decode_rgb_y`.
        size: output side (square) or (height, width).
    Returns:
        (height, width, sum C_i) with the dtype of ``parts``: integers are the exact bilinear value rounded to
        nearest (within 0.5, unbiased; uint8 goes through OpenCV's 16-bit kernel, see the module docstring),
        float32 is exact to float rounding.
    Raises:
        ConfigError: no parts, an unknown channel count, more than 4 channels in all, mixed or unsupported dtypes.
    """
    parts = [tf.convert_to_tensor(p) for p in parts]
    if not parts:
        raise ConfigError("merge_resize: got no image parts; pass at least one (H, W, C) tensor")
    channels = [p.shape[-1] if p.shape.rank == 3 else None for p in parts]
    if None in channels or sum(channels) > 4:
        raise ConfigError(f"merge_resize: parts of shapes {[p.shape for p in parts]}: each needs a static channel "
                          f"count (H, W, C) and at most 4 channels in all (cv2.merge/resize)")
    dtypes = {p.dtype for p in parts}
    if len(dtypes) != 1 or parts[0].dtype not in DTYPES:
        raise ConfigError(f"merge_resize: parts of dtypes {sorted(d.name for d in dtypes)}; they need one dtype of "
                          f"{[d.name for d in DTYPES]}")
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    out = tf.numpy_function(functools.partial(_merge_resize_np, h, w), parts, parts[0].dtype, stateful=False,
                            name="cv2_merge_resize")
    return tf.ensure_shape(out, [h, w, sum(channels)])
