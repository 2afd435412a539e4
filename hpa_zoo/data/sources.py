"""tf.data sources of example dicts: image folders in the Kaggle / HPAv18 layouts (read and decoded with tf.io, bad
files checked by their magic bytes and trailers) and the TFDS datasets (docs/ARCHITECTURE.md, "Pinned interfaces").

Examples are ``{"id": tf.string (), "image": tf.uint8 (H, W, 4) R,G,B,Y, "multi_hot": tf.uint8 (28,)}``."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal, Sequence

import tensorflow as tf

from hpa_zoo.constants import CHANNELS, NUM_CLASSES
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.data.images import CHANNEL_EXTENSIONS, HPAV18_PLANE, find_channel_file
from hpa_zoo.data.labels import OnError, SkipReport, read_labels_csv
from hpa_zoo.safepaths import check_image_id
from hpa_zoo.data.image_ops import resize
from hpa_zoo.data import rgby_jpeg

log = logging.getLogger(__name__)

Layout = Literal["kaggle", "hpav18"]


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


def register_tfds_builders(name: str) -> None:
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


def tfds_dataset(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
                 decode_image: bool = True) -> tf.data.Dataset:
    """A prepared TFDS dataset (e.g. ``"hpa_kaggle/512"``, ``"hpa_v18/512"``) as example dicts.

    The ``tfds_hpa`` builders are imported lazily to register them. The builder's ``labels`` sequence is
    replaced by ``multi_hot``; other features (e.g. extra metadata) are dropped. A name without a version whose
    current builder version is not prepared in `data_dir` reads the newest older version found there (a
    ``tfds_hpa`` 1.0.0 PNG dataset, with a warning saying how to rebuild it), see `tfds_builder`.

    Args:
        name: TFDS name with config, as for ``tfds.load``.
        split: e.g. ``"train"``, ``"train[:10%]"``.
        data_dir: the TFDS data dir (default: TFDS's, ``~/tensorflow_datasets``).
        decode_image: False: a dataset that stores its images as RGB+Y JPEG (`hpa_zoo.data.rgby_jpeg`, the
            ``tfds_hpa`` default) gives the stored pair under `rgby_jpeg.ENCODED_KEY` ((2,) tf.string) instead
            of ``image``, for a map that decodes only what it needs; other storages are decoded as usual.
    Returns:
        Dataset of ``{"id": tf.string (), "image": tf.uint8 (H, W, 4), "multi_hot": tf.uint8 (28,)}`` (with
        ``decode_image=False`` on a JPEG-stored dataset: ``ENCODED_KEY`` tf.string (2,) in place of ``image``) in
        the stored order (files are not shuffled).
    Raises:
        HpaDataError: the dataset is not prepared in `data_dir` (the message says how to build it), has no
            such split, or is of a version this code cannot read (the message names it and the rebuild command).
    """
    import tensorflow_datasets as tfds

    register_tfds_builders(name)
    where = data_dir or "~/tensorflow_datasets"
    try:
        builder = tfds_builder(name, data_dir=data_dir)
        image = builder.info.features["image"] if "image" in builder.info.features else None
        undecoded = not decode_image and getattr(image, "storage", None) == rgby_jpeg.STORAGE
        ds = builder.as_dataset(split=split, shuffle_files=False,
                                decoders={"image": tfds.decode.SkipDecoding()} if undecoded else None)
    except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as exc:
        raise HpaDataError(f"TFDS dataset {name!r} split {split!r} is not prepared in {where} ({exc}); build it "
                           f"first with `hpa-zoo prepare` (or `tfds build`)") from exc
    except ValueError as exc:
        if "Unknown split" not in str(exc):
            raise
        raise HpaDataError(f"TFDS dataset {name!r} in {where}: {exc} A dataset "
                           f"prepared from a header-only sample_submission.csv has no test split; list the test "
                           f"ids there and run `hpa-zoo prepare` again, or use another split") from exc
    image_key = rgby_jpeg.ENCODED_KEY if undecoded else "image"

    def to_example(features):
        out = {"id": features["id"], image_key: features["image"]}
        if "multi_hot" in features:
            out["multi_hot"] = tf.cast(features["multi_hot"], tf.uint8)
        elif "labels" in features:
            out["multi_hot"] = tfds_multi_hot(features["labels"])
        return out

    return ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def tfds_builder(name: str, *, data_dir: str | os.PathLike | None = None):
    """The TFDS builder of `name` in `data_dir`, falling back to an older prepared version.

    When `name` gives no version (``"hpa_kaggle/512"``) and the builder's current version (``tfds_hpa``: 2.0.0,
    RGB+Y JPEG) is not prepared there but an older one is (1.0.0, PNG), the newest older one is returned, with a
    warning naming its folder and the command that rebuilds it at the current version.

    Returns:
        A ``tfds.core.DatasetBuilder`` (not necessarily prepared: ``as_dataset`` then says so).
    Raises:
        HpaDataError: only versions this code cannot read are prepared; the message names the folder, the
            version and the ``hpa-zoo prepare`` command that rebuilds it.
        tfds.core.registered.DatasetNotFoundError: no builder of that name.
    """
    import tensorflow_datasets as tfds

    data_dir = None if data_dir is None else os.fspath(data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    if ":" in name or builder.is_prepared():
        return builder
    variant = os.path.dirname(os.fspath(builder.data_dir))  # <data_dir>/<dataset>/<config>
    found = sorted((tfds.core.Version(v) for v in (tf.io.gfile.listdir(variant) if tf.io.gfile.isdir(variant)
                                                     else []) if _is_version(v.rstrip("/"))
                    and tf.io.gfile.exists(os.path.join(variant, v.rstrip("/"), "dataset_info.json"))), reverse=True)
    older = [v for v in found if v < builder.version]
    if not older:
        return builder
    old_dir = os.path.join(variant, str(older[0]))
    config = builder.builder_config.name if builder.builder_config else None
    rebuild = (f"hpa-zoo prepare --dataset {builder.name}" + (f" --config {config}" if config else "")
               + " --manual-dir <the downloaded data>" + (f" --data-dir {data_dir}" if data_dir else ""))
    try:
        old = tfds.builder(f"{name}:{older[0]}", data_dir=data_dir)
        old.info.features  # noqa: B018 (a version the code does not define is read from its features.json)
    except (AssertionError, ValueError) as exc:  # tfds: "Unrecognized FeatureConnector type", "cannot be loaded"
        raise HpaDataError(f"{old_dir}: {builder.name} version {older[0]} cannot be read by this hpa-zoo "
                           f"({str(exc).splitlines()[0]}); "
                           f"rebuild it at version {builder.version}: {rebuild}") from exc
    log.warning("%s: reading %s version %s, the newest prepared there (the current version %s is not; see the "
                "builder's release notes); to rebuild it at %s: %s", old_dir, builder.name, older[0], builder.version,
                builder.version, rebuild)
    return old


def _is_version(text: str) -> bool:
    """Whether a folder name is a TFDS version (``"1.0.0"``)."""
    parts = text.split(".")
    return len(parts) == 3 and all(p.isdigit() for p in parts)
