"""Reading HPA fields of view from disk: one file per stain, Kaggle PNGs or HPAv18 JPEGs, with clear errors.

The array convention everywhere in hpa-zoo: an image is (H, W, 4) uint8 in R, G, B, Y order
(`hpa_zoo.constants.CHANNELS`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Sequence

import cv2
import numpy as np

from hpa_zoo.constants import CHANNELS
from hpa_zoo.errors import HpaDataError
from hpa_zoo.remote import is_file, is_remote, join, read_bytes
from hpa_zoo.safepaths import check_image_id

#: For HPAv18 website JPEGs (false-coloured RGB), the plane that carries each stain (teams.md §0.3,
#: bestfitting COLOR_INDEXS): red -> R, green -> G, blue -> B, yellow -> R.
HPAV18_PLANE = {"red": 0, "green": 1, "blue": 2, "yellow": 0}

#: File extensions tried, in order, when looking for a channel file.
CHANNEL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def find_channel_file(folder: str | os.PathLike, image_id: str, color: str,
                      extensions: Sequence[str] = CHANNEL_EXTENSIONS) -> Path | str:
    """Return the path of ``{folder}/{image_id}_{color}{ext}`` for the first extension that exists.

    ``folder`` may be a URL (`hpa_zoo.remote`: ``gs://``, ``memory://``...); the result is then a URL string.

    Raises:
        HpaDataError: no such file, naming every name that was tried; an id that is a path.
    """
    check_image_id(str(image_id), str(folder))
    folder = folder if is_remote(folder) else Path(folder)
    for ext in extensions:
        candidate = join(folder, f"{image_id}_{color}{ext}")
        if is_file(candidate):
            return candidate if is_remote(folder) else Path(candidate)
    tried = ", ".join(f"{image_id}_{color}{e}" for e in extensions)
    raise HpaDataError(f"{folder}: missing {color} channel of image {image_id!r} (looked for {tried}); "
                       f"every image needs four files {image_id}_{{red,green,blue,yellow}}.png")


def read_channel(path: str | os.PathLike, *, plane: int | None = None,
                 expect_dtype: Literal["uint8", "uint16", "any"] = "uint8") -> np.ndarray:
    """Read one stain image as a 2-D array.

    Args:
        path: PNG, JPEG or TIFF file (a local path or a URL, `hpa_zoo.remote`).
        plane: for colour files (H, W, 3), which RGB plane to take (0=R, 1=G, 2=B). If None, a colour file
            is an error (a Kaggle channel file must be grayscale).
        expect_dtype: ``"uint8"`` raises on 16-bit input (Kaggle PNGs are 8-bit); ``"uint16"`` raises on 8-bit;
            ``"any"`` accepts both.
    Returns:
        (H, W) array, uint8 or uint16 as stored.
    Raises:
        HpaDataError: empty, unreadable or truncated file, wrong channel count or bit depth.
    """
    path = path if is_remote(path) else Path(path)
    if not is_remote(path) and not path.is_file():  # a URL is not asked twice: a missing one fails its read
        raise HpaDataError(f"{path}: file not found")
    data = read_bytes(path)
    if not data:
        raise HpaDataError(f"{path}: the file is empty (0 bytes); re-download or re-export it")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise HpaDataError(f"{path}: cannot be decoded as an image (corrupt or truncated); re-download it")
    if img.ndim == 3:
        if plane is None:
            if img.shape[2] in (3, 4) and _planes_equal(img):
                img = img[..., 0]
            else:
                raise HpaDataError(f"{path}: has {img.shape[2]} colour planes but a single-stain grayscale "
                                   f"image was expected; for HPAv18 RGB JPEGs use the 'hpav18' reader")
        else:
            if img.shape[2] < 3:
                raise HpaDataError(f"{path}: has {img.shape[2]} planes, cannot take RGB plane {plane}")
            img = img[..., 2 - plane]  # OpenCV decodes BGR
    elif img.ndim == 2 and plane is not None:
        pass  # a grayscale file where a colour one was expected: the single plane carries the stain
    if img.dtype not in (np.uint8, np.uint16):
        raise HpaDataError(f"{path}: pixel type {img.dtype} is not supported; use 8- or 16-bit images")
    if expect_dtype == "uint8" and img.dtype != np.uint8:
        raise HpaDataError(f"{path}: is {img.dtype.itemsize * 8}-bit but 8-bit was expected; convert it "
                           f"(e.g. divide by 257) or use a reader that accepts 16-bit input")
    if expect_dtype == "uint16" and img.dtype != np.uint16:
        raise HpaDataError(f"{path}: is 8-bit but 16-bit was expected; use the 16-bit full-resolution file, or "
                           f"read it with expect_dtype='any' (load_rgby(..., allow_16bit=True) takes both)")
    return np.ascontiguousarray(img)


def _planes_equal(img: np.ndarray) -> bool:
    return bool(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]))


def to_uint8(channel: np.ndarray) -> np.ndarray:
    """Bring one channel to 8 bits: uint8 is returned as it is, uint16 is scaled by 255/65535 and rounded.

    The scaling maps the full 16-bit range onto the full 8-bit range (0 -> 0, 65535 -> 255), so a 16-bit
    full-resolution TIFF lands on the same intensity scale as the 8-bit Kaggle PNGs.

    Args:
        channel: (H, W) uint8 or uint16.
    Returns:
        (H, W) uint8.
    """
    if channel.dtype == np.uint8:
        return channel
    if channel.dtype != np.uint16:
        raise HpaDataError(f"pixel type {channel.dtype} cannot be converted to 8 bits; use 8- or 16-bit images")
    return np.round(channel.astype(np.float32) / 257.0).astype(np.uint8)


def load_rgby(folder: str | os.PathLike, image_id: str, *,
              layout: Literal["kaggle", "hpav18"] = "kaggle",
              size: int | None = None,
              interpolation: int = cv2.INTER_LINEAR,
              allow_16bit: bool = False) -> np.ndarray:
    """Load the four stains of one field of view as one (H, W, 4) uint8 RGBY array.

    Args:
        folder: folder holding ``{image_id}_{red,green,blue,yellow}.{png,jpg,tif}`` (a local path or a URL).
        image_id: the sample id.
        layout: ``"kaggle"`` (grayscale file per stain) or ``"hpav18"`` (false-coloured RGB JPEGs: the stain's
            plane is taken, `HPAV18_PLANE`).
        size: if given, each channel is resized to (size, size) with `interpolation` (cv2 INTER_LINEAR, as
            Team 1 resized the TIFFs, teams.md §1.4).
        allow_16bit: accept 16-bit channel files (e.g. full-resolution TIFFs) and convert them with `to_uint8`
            before resizing; if False a 16-bit file is an error.
    Returns:
        (H, W, 4) uint8, channels R, G, B, Y.
    Raises:
        HpaDataError: a missing or unreadable channel, or channels of different sizes.
    """
    planes = []
    shapes = {}
    for color in CHANNELS:
        path = find_channel_file(folder, image_id, color)
        plane = HPAV18_PLANE[color] if layout == "hpav18" else None
        img = read_channel(path, plane=plane, expect_dtype="any" if allow_16bit else "uint8")
        img = to_uint8(img)
        shapes[color] = img.shape
        planes.append(img)
    if len(set(shapes.values())) != 1:
        desc = ", ".join(f"{c} {s[1]}x{s[0]}" for c, s in shapes.items())
        raise HpaDataError(f"{folder if is_remote(folder) else Path(folder)}: the channels of image {image_id!r} have different sizes ({desc}); "
                           f"all four stains must be the same field of view at the same resolution")
    if size is not None:
        planes = [p if p.shape == (size, size) else cv2.resize(p, (size, size), interpolation=interpolation)
                  for p in planes]
    return np.stack(planes, axis=-1)


def fit_to_model(image: np.ndarray, size: int, *, pixel_size_um: float | None = None,
                 model_pixel_size_um: float | None = None) -> np.ndarray:
    """Bring one user image to a model's ``size`` x ``size`` input, at the model's scale when both pixel sizes
    are known.

    Without pixel sizes the whole field is resized to ``size`` (what the teams did with the HPA fields). With them,
    the image is first rescaled by ``pixel_size_um / model_pixel_size_um`` (so a cell spans as many pixels as in
    the model's training images; area interpolation when shrinking, bilinear when enlarging), then centred on a
    black ``size`` canvas: padded when smaller, centre-cropped when larger.

    Args:
        image: (H, W, C) uint8.
        size: the model's image side.
        pixel_size_um: µm per pixel of ``image``.
        model_pixel_size_um: µm per pixel of the model's images (registry ``pixel_size_um``).

    Returns:
        (size, size, C) uint8.

    Raises:
        HpaDataError: a pixel size that is not a positive number.
    """
    def resize(img, hw):
        interp = cv2.INTER_AREA if hw[0] < img.shape[0] else cv2.INTER_LINEAR
        out = cv2.resize(img, (hw[1], hw[0]), interpolation=interp)
        return out[..., None] if out.ndim == 2 else out

    if pixel_size_um is None or model_pixel_size_um is None:
        return image if image.shape[:2] == (size, size) else resize(image, (size, size))
    if not (pixel_size_um > 0 and model_pixel_size_um > 0):
        raise HpaDataError(f"pixel sizes {pixel_size_um} / {model_pixel_size_um} µm: both must be > 0")
    scale = float(pixel_size_um) / float(model_pixel_size_um)
    h, w = (max(1, int(round(d * scale))) for d in image.shape[:2])
    scaled = image if (h, w) == image.shape[:2] else resize(image, (h, w))
    canvas = np.zeros((size, size, image.shape[2]), np.uint8)
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)  # crop offsets (TF's resize_with_crop_or_pad)
    src = scaled[y0: y0 + min(size, h), x0: x0 + min(size, w)]
    top, left = max(0, (size - h) // 2), max(0, (size - w) // 2)  # pad offsets
    canvas[top: top + src.shape[0], left: left + src.shape[1]] = src
    return canvas
