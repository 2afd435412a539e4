"""tf.data input pipelines: sources (image folders, TFDS) and per-image ops, composed per recipe.

Examples flowing through tf.data are dicts (docs/ARCHITECTURE.md, "Pinned interfaces"):
``{"id": tf.string (), "image": tf.uint8 (H, W, 4) R,G,B,Y, "multi_hot": tf.uint8 (28,)}``.

Every op works on ONE image tensor (H, W, C) for any channel count C (RGBY, RGB, a single stain) and is
built from tf ops only, so it runs inside ``Dataset.map`` without Python per example. Random ops are
*stateless*: they take a ``seed`` (2,) int32/int64 tensor and give the same output for the same seed.

Recipes compose them, e.g. Team 1 training (teams.md §1.4)::

    def train_map(ex, seed):
        s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        img = random_d4(random_scale_crop(ex["image"], 512, s1), s2)
        return img, ex["multi_hot"]

    ds = batch_pipeline(folder_dataset("train", "train.csv", image_size=768), train_map,
                        batch_size=32, training=True, seed=0)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Literal, Sequence

import tensorflow as tf

from hpa_zoo.constants import CHANNELS, D4_ORDER, NUM_CLASSES
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.data.images import CHANNEL_EXTENSIONS, HPAV18_PLANE, find_channel_file
from hpa_zoo.data.labels import OnError, SkipReport, read_labels_csv
from hpa_zoo.safepaths import check_image_id

log = logging.getLogger(__name__)

# (flip up-down, flip left-right, transpose) per entry of D4_ORDER.
_D4_FLAGS: tuple[tuple[bool, bool, bool], ...] = tuple(
    ("flipud" in name, "fliplr" in name, "transpose" in name) for name in D4_ORDER
)

#: ImageNet statistics in [0, 1] units, used with RGB-only inputs by Team 2 (teams.md §2.2).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Team 3's ResNet34 normalisation (x - 127.5) / 255 (teams.md §3.4) as mean/std in [0, 1] units:
#: ``normalize_mean_std(image, *RESNET34_MEAN_STD)``.
RESNET34_MEAN_STD = (0.5, 1.0)

Layout = Literal["kaggle", "hpav18"]


# ============================================================================================ ops
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
        (h, w, C), same dtype as `image` (integers are rounded and clipped).
    """
    h, w = _size_hw(size)
    out = tf.image.resize(image, (h, w), method="bilinear")
    return _cast_like(out, image.dtype)


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


def _d4_static(image: tf.Tensor, k: int) -> tf.Tensor:
    flip_ud, flip_lr, transpose = _D4_FLAGS[k]
    if flip_ud:
        image = tf.reverse(image, axis=[0])
    if flip_lr:
        image = tf.reverse(image, axis=[1])
    if transpose:
        image = tf.transpose(image, perm=[1, 0, 2])
    return image


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


# ============================================================================================ sources
def _list_channel_files(images_dir: Path, ids: Sequence[str], on_error: OnError,
                        report: SkipReport) -> tuple[list[str], list[list[str]]]:
    """For each id, the paths of its R, G, B, Y files (one directory listing, no stat per file)."""
    try:
        present = set(os.listdir(images_dir))
    except OSError as exc:
        raise HpaDataError(f"{images_dir}: cannot list the image folder ({exc}); pass the folder holding "
                           f"{{Id}}_{{red,green,blue,yellow}}.png files") from exc
    kept_ids, paths = [], []
    for image_id in ids:
        row = []
        for color in CHANNELS:
            name = next((f"{image_id}_{color}{ext}" for ext in CHANNEL_EXTENSIONS
                         if f"{image_id}_{color}{ext}" in present), None)
            if name is None:
                try:
                    find_channel_file(images_dir, image_id, color)  # raises with the standard message
                except HpaDataError as exc:
                    if on_error == "raise":
                        raise
                    report.add(f"{images_dir}/{image_id}", str(exc))
                break
            row.append(str(images_dir / name))
        if len(row) == len(CHANNELS):
            kept_ids.append(image_id)
            paths.append(row)
    return kept_ids, paths


def _ids_in_folder(images_dir: Path) -> list[str]:
    suffixes = tuple(f"_red{ext}" for ext in CHANNEL_EXTENSIONS)
    names = sorted(os.listdir(images_dir))
    return [n[: n.rindex("_red")] for n in names if n.endswith(suffixes)]


#: (signature, length) of the formats ``tf.io.decode_image`` reads: PNG, JPEG, GIF, BMP, WebP (RIFF).
_IMAGE_MAGIC = ((b"\x89PNG", 4), (b"\xff\xd8\xff", 3), (b"GIF8", 4), (b"BM", 2), (b"RIFF", 4))
#: (signature, trailer): a complete PNG ends with the IEND chunk (type + CRC), a complete JPEG with the EOI
#: marker; a cut file lacks it. Up to `_TRAILER_SLACK` bytes of padding after it are tolerated (decoders ignore them).
_IMAGE_TRAILER = ((b"\x89PNG", b"IEND\xaeB`\x82"), (b"\xff\xd8\xff", b"\xff\xd9"))
_TRAILER_SLACK = 16
_BAD_FILE_FIX = "re-download it, or build with `hpa-zoo prepare --skip-bad` to list bad files"


def _has_trailer(data: tf.Tensor, trailer: bytes) -> tf.Tensor:
    """scalar bool: `trailer` ends `data` or is followed by at most `_TRAILER_SLACK` bytes."""
    n, window = len(trailer), len(trailer) + _TRAILER_SLACK
    size = tf.strings.length(data)
    tail = tf.strings.substr(data, tf.maximum(size - window, 0), window)
    pos = tf.maximum(tf.strings.length(tail) - n - tf.range(_TRAILER_SLACK + 1), 0)
    ends = tf.strings.substr(tf.fill([_TRAILER_SLACK + 1], tail), pos, tf.fill([_TRAILER_SLACK + 1], n))
    return tf.reduce_any(tf.equal(ends, trailer))


def _byte_at(data: tf.Tensor, pos: int) -> tf.Tensor:
    """scalar string: byte ``pos`` of ``data``, or b"" when the data is shorter (``tf.strings.substr`` raises an
    unnamed "pos out of range" error there, and graph ops do not short-circuit: an empty file must reach the
    assertion that names it)."""
    return tf.strings.substr(data, tf.minimum(pos, tf.strings.length(data)), 1)


def _decode_plane(path: tf.Tensor, plane: int | None) -> tf.Tensor:
    """One stain file -> (H, W) uint8. `plane` None: grayscale file; else that RGB plane of a colour file.

    TF's decoders do not name the file in their errors, so what can be checked before decoding is checked here
    with messages ``[<file>] [<what is wrong>; <fix>]``: the signature (corrupt / not an image / a TIFF), a
    16-bit PNG, the PNG/JPEG trailer (truncated), and after decoding the plane count (a colour file where one
    stain was expected).
    """
    data = tf.io.read_file(path)
    head = tf.strings.substr(data, 0, 4)
    # decode_image's own error ("Unknown image file format") does not name the file: check the signature first
    known = tf.reduce_any(tf.stack([tf.equal(tf.strings.substr(head, 0, n), magic) for magic, n in _IMAGE_MAGIC]))
    tiff = tf.logical_or(tf.equal(head, b"II*\x00"), tf.equal(head, b"MM\x00*"))
    check = [tf.debugging.Assert(tf.logical_not(tiff), [
        path, "is a TIFF, which tf.data cannot decode; build a TFDS dataset from it with `hpa-zoo prepare` (reads "
        "TIFFs, 16-bit scaled to 8) or convert it to an 8-bit PNG"])]
    with tf.control_dependencies(check):
        check.append(tf.debugging.Assert(known, [
            path, "cannot be decoded as an image (corrupt or not PNG/JPEG/GIF/BMP/WebP); " + _BAD_FILE_FIX]))
    # IHDR bit depth (byte 24): decode_image(dtype=uint8) would silently rescale 16-bit PNGs, unlike images.load_rgby
    check.append(tf.debugging.Assert(tf.logical_not(tf.logical_and(
        tf.equal(head, b"\x89PNG"), tf.equal(_byte_at(data, 24), b"\x10"))), [
        path, "is 16-bit but 8-bit was expected; convert it to 8 bits (round(x / 257)), or build a TFDS dataset "
        "with `hpa-zoo prepare` (full-size TIFF folders may be 16-bit)"]))
    with tf.control_dependencies(check):
        # a truncated file fails inside the decoder ("Invalid PNG data, size ..."), again without the file
        checks = [tf.debugging.Assert(
            tf.logical_or(tf.not_equal(tf.strings.substr(head, 0, len(magic)), magic), _has_trailer(data, trailer)),
            [path, f"is truncated or corrupt (no {'PNG IEND chunk' if magic[1:4] == b'PNG' else 'JPEG end marker'} "
                   f"at its end); " + _BAD_FILE_FIX]) for magic, trailer in _IMAGE_TRAILER]
    with tf.control_dependencies(checks):
        data = tf.identity(data)
    if plane is None:
        # channels as stored (forcing channels=1 would silently turn a colour file into luma)
        img = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
        grey = tf.reduce_all(tf.equal(img[..., :1], img[..., 1:3]))  # True for a 1-plane image (empty slice)
        same = tf.debugging.Assert(tf.logical_and(grey, tf.not_equal(tf.shape(img)[-1], 2)), [
            path, "has", tf.shape(img)[-1], "colour planes but a single-stain grayscale image was expected; for HPAv18 "
            "RGB JPEGs use layout='hpav18'"])
        with tf.control_dependencies([same]):
            return tf.identity(img[..., 0])
    img = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    return img[..., plane]


def _make_decoder(layout: Layout, image_size: int | None):
    planes = [HPAV18_PLANE[c] if layout == "hpav18" else None for c in CHANNELS]

    def decode(image_id, paths):
        chans = [_decode_plane(paths[i], planes[i]) for i in range(len(CHANNELS))]
        checks = [tf.debugging.Assert(
            tf.reduce_all(tf.equal(tf.shape(c), tf.shape(chans[0]))),
            [f"folder_dataset: the {name} channel has another size than red; all four stains of an image "
             f"must have the same resolution. Image id:", image_id])
            for c, name in zip(chans[1:], CHANNELS[1:])]
        with tf.control_dependencies(checks):  # before tf.stack, whose own error names no image
            image = tf.stack(chans, axis=-1)
        if image_size is not None:
            image = tf.ensure_shape(resize(image, image_size), [image_size, image_size, len(CHANNELS)])
        else:
            image = tf.ensure_shape(image, [None, None, len(CHANNELS)])
        return image

    return decode


def folder_dataset(
    images_dir: str | os.PathLike,
    csv_path: str | os.PathLike | None = None,
    *,
    ids: Sequence[str] | None = None,
    layout: Layout = "kaggle",
    image_size: int | None = None,
    labelled: bool = True,
    on_error: OnError = "raise",
    report: SkipReport | None = None,
) -> tf.data.Dataset:
    """Examples read from a folder of per-stain files ``{Id}_{red,green,blue,yellow}.{png,jpg,...}``.

    The file listing is validated up front in Python (one directory listing); reading and decoding happen in
    the tf.data graph (``tf.io.read_file`` + ``tf.io.decode_image``), never in Python per example.

    Args:
        images_dir: the folder (e.g. Kaggle ``train/``).
        csv_path: an ``Id,Target`` CSV (``hpa_zoo.data.labels.read_labels_csv``); for ``labelled=False`` only its
            ``Id`` column is used. If None, `ids` are used, or every id with a ``*_red.*`` file in the folder.
        ids: restrict to these ids (e.g. one fold), in this order; they must be in the CSV when one is given.
        layout: ``"kaggle"`` (one grayscale file per stain) or ``"hpav18"`` (HPA website RGB JPEGs: the plane
            ``hpa_zoo.data.images.HPAV18_PLANE`` is taken, R, G, B, R; teams.md §0.3).
        image_size: resize every image to (image_size, image_size) (bilinear); None keeps the stored size.
        labelled: emit ``multi_hot`` (needs `csv_path`); False for test folders (the key is then absent).
        on_error: ``"raise"``: a missing channel file or bad CSV row raises `HpaDataError`; ``"skip"``: the
            sample is dropped and recorded in `report` (a warning summarises it).
        report: receives the skipped samples when ``on_error="skip"``.
    Returns:
        Dataset of ``{"id": tf.string (), "image": tf.uint8 (H, W, 4) R,G,B,Y, "multi_hot": tf.uint8 (28,)}``
        in CSV (or `ids`) order.
    Raises:
        HpaDataError: missing folder/CSV/channel file, an id not in the CSV, malformed CSV rows, an id that is a
            path (`hpa_zoo.safepaths.check_image_id`).
        ConfigError: an unknown layout or ``labelled=True`` without a CSV.
    """
    if layout not in ("kaggle", "hpav18"):
        raise ConfigError(f"folder_dataset: layout={layout!r}; use 'kaggle' (PNG per stain) or 'hpav18' (RGB JPEGs)")
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"folder_dataset: on_error={on_error!r}; use 'raise' or 'skip'")
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise HpaDataError(f"{images_dir}: image folder not found; pass the folder holding "
                           f"{{Id}}_{{red,green,blue,yellow}} files")
    report = report if report is not None else SkipReport()
    if labelled and csv_path is None:
        raise ConfigError("folder_dataset: labelled=True needs csv_path (an Id,Target CSV); "
                          "pass labelled=False for an unlabelled folder")
    labels_by_id: dict[str, tuple[int, ...]] = {}
    if csv_path is not None:
        df = read_labels_csv(csv_path, require_target=labelled, on_error=on_error, report=report)
        if labelled:
            labels_by_id = dict(zip(df["Id"], df["labels"]))
        if ids is None:
            ids = list(df["Id"])
        else:
            known = set(df["Id"])
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise HpaDataError(f"{csv_path}: {len(unknown)} requested id(s) are not in the CSV, e.g. "
                                   f"{unknown[:3]}; pass ids from this CSV (check the fold file matches it)")
    elif ids is None:
        ids = _ids_in_folder(images_dir)
    ids = [check_image_id(str(i), f"folder_dataset(ids=...) item {k}") for k, i in enumerate(ids)]
    ids, paths = _list_channel_files(images_dir, ids, on_error, report)
    if len(report):
        log.warning("folder_dataset(%s): %s", images_dir, report.summary())
    if not ids:
        raise HpaDataError(f"{images_dir}: no complete image (4 channel files) to read; check the folder and CSV")

    columns = {"id": tf.constant(ids, tf.string),
               "paths": tf.constant(paths, tf.string, shape=[len(ids), len(CHANNELS)])}
    if labelled:
        hot = [[1 if c in labels_by_id[i] else 0 for c in range(NUM_CLASSES)] for i in ids]
        columns["multi_hot"] = tf.constant(hot, tf.uint8, shape=[len(ids), NUM_CLASSES])
    decode = _make_decoder(layout, image_size)

    def to_example(row):
        out = {"id": row["id"], "image": decode(row["id"], row["paths"])}
        if labelled:
            out["multi_hot"] = row["multi_hot"]
        return out

    return tf.data.Dataset.from_tensor_slices(columns).map(
        to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


#: TFDS dataset name -> the hpa-zoo module whose import registers its builder.
TFDS_BUILDER_MODULES = {"hpa_kaggle": "tfds_hpa.hpa_kaggle", "hpa_v18": "tfds_hpa.hpa_v18"}


def _register_tfds_builders(name: str) -> None:
    """Import the hpa-zoo TFDS builder for `name` (if it is one) so that ``tfds.load`` finds it."""
    import importlib

    module = TFDS_BUILDER_MODULES.get(name.split("/")[0].split(":")[0])
    if module is not None:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            log.debug("TFDS builder module %s not importable: %s", module, exc)


def tfds_multi_hot(labels: tf.Tensor, num_classes: int = NUM_CLASSES) -> tf.Tensor:
    """Class-id sequence (L,) int (L may be 0, e.g. a test image) -> multi-hot (num_classes,) uint8."""
    hot = tf.reduce_max(tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.uint8), axis=0)
    return tf.ensure_shape(hot, [num_classes])


def tfds_dataset(name: str, split: str, *, data_dir: str | os.PathLike | None = None) -> tf.data.Dataset:
    """A prepared TFDS dataset (e.g. ``"hpa_kaggle/512"``, ``"hpa_v18/512"``) as example dicts.

    The ``tfds_hpa`` builders are imported lazily to register them. The builder's ``labels`` sequence is
    replaced by ``multi_hot``; other features (e.g. extra metadata) are dropped.

    Args:
        name: TFDS name with config, as for ``tfds.load``.
        split: e.g. ``"train"``, ``"train[:10%]"``.
        data_dir: the TFDS data dir (default: TFDS's, ``~/tensorflow_datasets``).
    Returns:
        Dataset of ``{"id": tf.string (), "image": tf.uint8 (H, W, 4), "multi_hot": tf.uint8 (28,)}`` in the
        stored order (files are not shuffled).
    Raises:
        HpaDataError: the dataset is not prepared in `data_dir` (the message says how to build it), or has no
            such split.
    """
    import tensorflow_datasets as tfds

    _register_tfds_builders(name)
    try:
        ds = tfds.load(name, split=split, data_dir=None if data_dir is None else str(data_dir),
                       shuffle_files=False, download=False)
    except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as exc:
        raise HpaDataError(f"TFDS dataset {name!r} split {split!r} is not prepared in "
                           f"{data_dir or '~/tensorflow_datasets'} ({exc}); build it first with "
                           f"`hpa-zoo prepare` (or `tfds build`)") from exc
    except ValueError as exc:
        if "Unknown split" not in str(exc):
            raise
        raise HpaDataError(f"TFDS dataset {name!r} in {data_dir or '~/tensorflow_datasets'}: {exc} A dataset "
                           f"prepared from a header-only sample_submission.csv has no test split; list the test "
                           f"ids there and run `hpa-zoo prepare` again, or use another split") from exc

    def to_example(features):
        out = {"id": features["id"], "image": features["image"]}
        if "multi_hot" in features:
            out["multi_hot"] = tf.cast(features["multi_hot"], tf.uint8)
        elif "labels" in features:
            out["multi_hot"] = tfds_multi_hot(features["labels"])
        return out

    return ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def resized_pair(example: dict, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The deterministic validation path most recipes share: the whole image resized to ``size``.

    Args:
        example: ``{"image": uint8 (H, W, C), "multi_hot": uint8 (28,), ...}``.
        size: output side.
    Returns:
        (image float32 (size, size, C) in [0, 255], multi_hot float32 (28,)).
    """
    return tf.cast(resize(example["image"], size), tf.float32), tf.cast(example["multi_hot"], tf.float32)


# ============================================================================================ batching
def training_pairs(ds: tf.data.Dataset, *, seed: int, shuffle_buffer: int | None = 256,
                   rerandomize_seeds: bool = True) -> tf.data.Dataset:
    """One training pass as ``(example, ex_seed)`` pairs, in the order `batch_pipeline` (training) maps them.

    ``ds`` shuffled with ``shuffle_buffer`` (re-shuffled each iteration), zipped with ``ex_seed``: a (2,) int64
    tensor of consecutive draws of ``tf.data.Dataset.random(seed)``, re-randomised each iteration of a repeated
    pass when ``rerandomize_seeds``.

    Args:
        ds: dataset of examples. seed: Python int.
        shuffle_buffer: shuffle buffer size; None keeps ``ds``'s order (an epoch already ordered by a sampler).
        rerandomize_seeds: new ``ex_seed`` draws on each iteration of a repeated pass.
    Returns:
        dataset of ``(example, ex_seed)``, as many as ``ds`` has.
    """
    if shuffle_buffer is not None:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # drop_remainder: the seeds get the static shape (2,) that stateless ops (augment) check
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=rerandomize_seeds).batch(
        2, drop_remainder=True)
    return tf.data.Dataset.zip(ds, seeds)


def batch_pipeline(
    ds: tf.data.Dataset,
    map_fn: Callable,
    *,
    batch_size: int,
    training: bool,
    seed: int = 0,
    shuffle_buffer: int = 256,
    cache: bool | str = False,
    drop_remainder: bool | None = None,
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """Shuffle (training), map, batch and prefetch, deterministically under `seed`.

    Training: ``[cache] -> shuffle(shuffle_buffer, seed, reshuffle each epoch) -> map_fn(example, ex_seed)
    -> batch(drop_remainder=True) -> prefetch``. ``ex_seed`` is a (2,) int64 tensor: consecutive draws of
    ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``, so it is a stateless function of
    (seed, epoch, position in the epoch) and two pipelines built with the same seed give identical batches,
    epoch after epoch (Team 1 re-seeded per epoch, teams.md §1.5; sampling with drop_last, §1.4).

    Evaluation: ``[cache] -> map_fn(example) -> batch(drop_remainder=False) -> prefetch``, in input order.

    It is pure tf.data, so it also feeds Keras on the JAX/PyTorch backends (``ds.as_numpy_iterator()``).

    Args:
        ds: dataset of examples (usually dicts from `folder_dataset` / `tfds_dataset`).
        map_fn: ``map_fn(example, seed)`` (training) or ``map_fn(example)`` (eval); tf ops only.
        batch_size: examples per batch.
        training: see above.
        seed: the pipeline seed.
        shuffle_buffer: shuffle buffer size (training only).
        cache: True caches decoded examples in memory, a string caches them to that file prefix.
        drop_remainder: override the default (True in training, False in eval).
        num_parallel_calls: parallelism of the map (output order stays deterministic).
    Returns:
        Batched dataset of whatever `map_fn` returns, with a leading batch dimension.
    Raises:
        ConfigError: batch_size < 1 or shuffle_buffer < 1.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_pipeline: batch_size={batch_size}; it must be >= 1")
    if training and shuffle_buffer < 1:
        raise ConfigError(f"batch_pipeline: shuffle_buffer={shuffle_buffer}; it must be >= 1")
    if cache:
        ds = ds.cache() if cache is True else ds.cache(str(cache))
    if training:
        ds = training_pairs(ds, seed=seed, shuffle_buffer=shuffle_buffer).map(
            map_fn, num_parallel_calls=num_parallel_calls, deterministic=True)
        drop = True if drop_remainder is None else drop_remainder
    else:
        ds = ds.map(map_fn, num_parallel_calls=num_parallel_calls, deterministic=True)
        drop = False if drop_remainder is None else drop_remainder
    return ds.batch(batch_size, drop_remainder=drop).prefetch(tf.data.AUTOTUNE)
