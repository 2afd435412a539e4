"""OpenCV inside a tf.data map (``tf.numpy_function``): the host training path's join-and-resize, where TensorFlow's
own kernels cost more CPU than decoding the image.

Why (one core, one (1280, 1280) crop window to 1024, benchmarks/README.md "input_pipeline.py"):

* joining the decoded RGB and Y planes into RGBY: ``tf.concat`` on the last axis copies 3 bytes and then 1 byte per
  pixel, 8.4 ms; ``cv2.merge`` 1.6 ms;
* bilinear resize of the uint8 RGBY crop: ``tf.image.resize`` 9-11 ms plus 3.7 ms to round back to uint8;
  ``cv2.resize`` (fixed-point, SIMD) 1.8 ms.

What it costs: the Python function runs under the GIL. Alone it adds ~0.3 ms a call to OpenCV's own work (the
argument and result conversion), and it gives the GIL up inside each of its two OpenCV calls. Beside a thread that
keeps the GIL busy (pure-Python CPU work in the same process), each take-back of the GIL waits up to
``sys.getswitchinterval()`` (5 ms): one (1280, 1280) crop then took 22.7 ms instead of 6.0, and Team 1's whole host
path on one core fell from 41.9 to 23.8 images/s (the all-TensorFlow path it replaced: 25.9 either way;
benchmarks/README.md). A training loop waits on its step and holds the GIL little; do not run CPU-bound Python
threads beside a training that needs its input rate. The op cannot be saved in a SavedModel or run by the tf.data
service, so it is for host *training* maps; serving graphs keep `hpa_zoo.data.image_ops` (tf ops only).

Numerics: ``cv2.INTER_LINEAR`` (the team's own resize, docs/teams.md §1.4) samples with half-pixel centres like
`hpa_zoo.data.image_ops.resize`. On integer images its 11-bit fixed-point weights keep every value within 1 grey
level of the exact bilinear value (max 0.76 measured), with a mean bias of about -0.12 grey levels
(tests/test_cv_ops.py, against NumPy from the formula). ``INTER_LINEAR_EXACT`` is not used: it is 1.5x slower and
errs by up to 1.4. OpenCV's own thread pool is left as the process has it; concurrent calls from tf.data's threads
run each resize on its caller's thread.
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
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return out.reshape(out.shape[:2] + (image.shape[-1] if image.ndim == 3 else 1,))


def merge_resize(parts: Sequence[tf.Tensor], size: int | tuple[int, int]) -> tf.Tensor:
    """``resize(concat(parts, axis=-1), size)`` in one OpenCV call pair (``cv2.merge`` + ``cv2.resize`` bilinear).

    Args:
        parts: one or more (H, W, C_i) tensors with the same H, W and dtype (uint8, uint16 or float32) and static
            channel counts C_i, e.g. ``[rgb (H, W, 3), y (H, W, 1)]`` from `hpa_zoo.data.rgby_jpeg.decode_rgb_y`.
        size: output side (square) or (height, width).
    Returns:
        (height, width, sum C_i) with the dtype of ``parts`` (integers from OpenCV's fixed-point arithmetic,
        within 1 of the exact bilinear value; see the module docstring).
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
