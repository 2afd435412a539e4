"""The user's own images: CSV tables of files and labels (the fine-tuning CSV), folders without a CSV, file
lists, and reading one item as a model-sized RGBY-ordered array. Shared by fine-tuning, prediction, QC and the
leak audit; NumPy / OpenCV, no models."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

from hpa_zoo.constants import CHANNELS
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.safepaths import check_relative_name, resolve_inside

#: User stain name (lower case) -> the HPA stain it is (teams.md §0: red = microtubules, green = protein of
#: interest, blue = nucleus, yellow = endoplasmic reticulum).
STAIN_ALIASES: dict[str, str] = {
    "red": "red", "microtubules": "red", "microtubule": "red", "tubulin": "red",
    "green": "green", "protein": "green", "antibody": "green", "target": "green", "gfp": "green",
    "blue": "blue", "nucleus": "blue", "nuclei": "blue", "dapi": "blue", "hoechst": "blue", "dna": "blue",
    "yellow": "yellow", "er": "yellow", "endoplasmic_reticulum": "yellow", "endoplasmic reticulum": "yellow",
    "calreticulin": "yellow",
}


LABEL_SEPARATOR = ";"


FILE_SEPARATOR = ";"


def map_stains(channels: Sequence[str], channel_map: Mapping[str, str | None] | None = None) -> list[str | None]:
    """The HPA stain (``"red"``, ``"green"``, ``"blue"``, ``"yellow"``) or None (unknown) of each user channel.

    Args:
        channels: user channel names, e.g. ``("nucleus", "protein")``.
        channel_map: explicit ``{user channel: HPA stain or None}``; overrides `STAIN_ALIASES`.

    Returns:
        list of len(channels).

    Raises:
        ConfigError: a duplicate channel name, or a channel_map value that is not an HPA stain.
    """
    channel_map = dict(channel_map or {})
    if len(set(channels)) != len(channels) or not channels:
        raise ConfigError(f"channels={tuple(channels)}: give at least one channel, each name once")
    out = []
    for ch in channels:
        if ch in channel_map:
            stain = channel_map[ch]
            if stain is not None and stain not in CHANNELS:
                raise ConfigError(f"channel_map[{ch!r}]={stain!r}: map to one of {CHANNELS} or None (unknown stain)")
            out.append(stain)
        else:
            out.append(STAIN_ALIASES.get(str(ch).lower()))
    return out


def read_table(data_csv, *, classes: Sequence[str] | None = None, multi_label: bool = True,
               n_channels: int, require_labels: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Read and check the fine-tuning CSV (module docstring, item 4).

    Args:
        data_csv: the CSV path.
        classes: the class names, in output order; default the sorted names found in ``labels``.
        multi_label: if False every row must have exactly one label.
        n_channels: channels per image (for ``filenames`` rows).
        require_labels: False for prediction: a CSV without ``labels`` (or with empty ones) gives empty tuples.

    Returns:
        (table with columns ``files`` (tuple of relative paths) and ``labels`` (tuple of class names), classes).

    Raises:
        HpaDataError: missing file/columns, an empty or unknown label, a wrong file count, a file name that is
            absolute or has a '..' part (`hpa_zoo.safepaths.check_relative_name`); the message names the CSV
            line (header = line 1) and the fix.
    """
    data_csv = Path(data_csv)
    if not data_csv.is_file():
        raise HpaDataError(f"{data_csv}: CSV not found; pass a CSV with columns filename(s),labels")
    df = pd.read_csv(data_csv, dtype=str, keep_default_na=False)
    if "labels" not in df.columns and not require_labels:
        df["labels"] = ""
    if "labels" not in df.columns or not ({"filename", "filenames"} & set(df.columns)):
        raise HpaDataError(f"{data_csv}: columns {list(df.columns)}; need 'labels' and 'filename' (one "
                           f"multi-channel file) or 'filenames' ('{FILE_SEPARATOR}'-separated, one per channel)")
    rows = []
    for k, row in enumerate(df.itertuples(index=False), start=2):
        where = f"{data_csv}, line {k}"
        names = tuple(s.strip() for s in str(row.labels).split(LABEL_SEPARATOR) if s.strip())
        if not names and require_labels:
            raise HpaDataError(f"{where}: empty labels; write class names separated by '{LABEL_SEPARATOR}'")
        if not multi_label and len(names) != 1 and (names or require_labels):
            raise HpaDataError(f"{where}: {len(names)} labels {names} but multi_label=False needs exactly one")
        if "filenames" in df.columns and str(getattr(row, "filenames")).strip():
            files = tuple(s.strip() for s in str(row.filenames).split(FILE_SEPARATOR))
            if len(files) != n_channels:
                raise HpaDataError(f"{where}: {len(files)} files for {n_channels} channels; list one file per "
                                   f"channel, in channel order, separated by '{FILE_SEPARATOR}'")
        elif "filename" in df.columns and str(getattr(row, "filename")).strip():
            files = (str(row.filename).strip(),)
        else:
            raise HpaDataError(f"{where}: no file name")
        for f in files:
            check_relative_name(f, f"{where}, {'filenames' if len(files) > 1 else 'filename'}")
        rows.append((files, names))
    if not rows:
        raise HpaDataError(f"{data_csv}: no rows")
    found = sorted({n for _, names in rows for n in names})
    classes = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise HpaDataError(f"{data_csv}: labels {unknown} are not in classes={classes}; add them or fix the CSV")
    return pd.DataFrame(rows, columns=["files", "labels"]), classes


def listed_files(data_csv) -> list[str]:
    """Every image file name a fine-tuning / prediction CSV lists (``filename``, or ``filenames`` split at
    ``;``), in order, each once, each checked to be relative (`hpa_zoo.safepaths.check_relative_name`).

    Raises:
        HpaDataError: missing CSV, no file column, an absolute or ``..`` file name (names the line).
    """
    data_csv = Path(data_csv)
    if not data_csv.is_file():
        raise HpaDataError(f"{data_csv}: CSV not found; pass a CSV with columns filename(s),labels")
    df = pd.read_csv(data_csv, dtype=str, keep_default_na=False)
    columns = [c for c in ("filenames", "filename") if c in df.columns]
    if not columns:
        raise HpaDataError(f"{data_csv}: columns {list(df.columns)}; need 'filename' (one multi-channel file) or "
                           f"'filenames' ('{FILE_SEPARATOR}'-separated, one per channel)")
    names: dict[str, None] = {}
    for k, row in enumerate(df[columns].itertuples(index=False), start=2):
        for cell in row:
            for name in (s.strip() for s in str(cell).split(FILE_SEPARATOR)):
                if name:
                    check_relative_name(name, f"{data_csv}, line {k}")
                    names.setdefault(name)
    return list(names)


def read_image(images_dir, files: Sequence[str], n_channels: int, size: int | None, *,
               where: str = "") -> np.ndarray:
    """One image as (size, size, n_channels) uint8 (native (H, W, n_channels) for ``size=None``) from one
    multi-channel file or one file per channel.

    A multi-channel PNG/TIFF is read with OpenCV (colour files are BGR(A) on disk order -> reversed to RGB(A));
    a multi-page TIFF gives one channel per page. 16-bit is scaled to 8-bit (`hpa_zoo.data.images.to_uint8`); the
    image is resized with area interpolation when a side shrinks, else bilinear.

    Raises:
        HpaDataError: missing/unreadable file, a channel count that is not ``n_channels``, or a file name that
            resolves outside `images_dir` (``..``, absolute, a symlink out: `hpa_zoo.safepaths.resolve_inside`).
    """
    from hpa_zoo.data.images import read_channel, to_uint8

    images_dir = Path(images_dir)
    if len(files) == 1 and n_channels > 1:
        path = resolve_inside(images_dir, files[0], where.rstrip(": "))
        if not path.is_file():
            raise HpaDataError(f"{where}{path}: file not found")
        ok, pages = cv2.imreadmulti(str(path), flags=cv2.IMREAD_UNCHANGED)
        if not ok or not pages:
            raise HpaDataError(f"{where}{path}: cannot be decoded as an image (corrupt, or not PNG/TIFF)")
        if len(pages) > 1:
            planes = [p if p.ndim == 2 else p[..., 0] for p in pages]
        else:
            img = pages[0]
            if img.ndim == 2:
                planes = [img]
            else:
                order = {3: [2, 1, 0], 4: [2, 1, 0, 3]}.get(img.shape[2], list(range(img.shape[2])))
                planes = [img[..., i] for i in order]
        if len(planes) != n_channels:
            raise HpaDataError(f"{where}{path}: has {len(planes)} channels but {n_channels} were declared; fix "
                               f"channels= or the file")
    else:
        planes = [read_channel(resolve_inside(images_dir, f, where.rstrip(": ")), expect_dtype="any") for f in files]
    planes = [to_uint8(p) if p.dtype != np.uint8 else p for p in planes]
    if len({p.shape for p in planes}) != 1:
        raise HpaDataError(f"{where}{images_dir}: the channels {list(files)} have different sizes "
                           f"{[p.shape for p in planes]}; all must be the same field of view")
    if size is None:
        return np.stack(planes, axis=-1)
    out = []
    for p in planes:
        if p.shape != (size, size):
            interp = cv2.INTER_AREA if max(p.shape) > size else cv2.INTER_LINEAR
            p = cv2.resize(p, (size, size), interpolation=interp)
        out.append(p)
    return np.stack(out, axis=-1)


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class Item:
    """One image to predict: its id, the files it is read from (relative to ``root``) and its true labels."""

    id: str
    root: Path
    files: tuple[str, ...]
    planes: tuple[int | None, ...] | None = None  # per file: the RGB plane of a colour file (HPAv18), else None
    labels: tuple[str, ...] | None = None


def discover(inputs, *, stains: Sequence, images_dir=None, skip_bad: bool = False) -> tuple[list[Item], list]:
    """The images to predict and the ones left out.

    Args:
        inputs: a folder (Kaggle / HPAv18 layout), a ``.csv`` (the fine-tuning format), or a list of image files.
        stains: the HPA stain of each model input channel (``"red"``...; None = a stain HPA folders do not have).
        images_dir: the folder the CSV's file names are relative to (default the CSV's folder).
        skip_bad: leave incomplete channel sets out (listed in the second return value) instead of refusing.

    Returns:
        (items, skipped) where skipped is a list of (id or file, reason).

    Raises:
        HpaDataError: nothing to predict, incomplete sets without ``skip_bad``, a bad CSV line (named).
    """
    if isinstance(inputs, (list, tuple)):
        if len(inputs) == 1 and Path(inputs[0]).is_dir() or len(inputs) == 1 and str(inputs[0]).endswith(".csv"):
            return discover(inputs[0], stains=stains, images_dir=images_dir, skip_bad=skip_bad)
        items = []
        for f in inputs:
            p = Path(f)
            if not p.is_file():
                raise HpaDataError(f"{p}: file not found; pass existing image files, a folder or a CSV")
            items.append(Item(p.stem, p.parent, (p.name,)))
        return _unique_ids(items), []
    path = Path(os.fspath(inputs))
    if path.is_dir():
        return _discover_folder(path, stains, skip_bad)
    if path.suffix.lower() == ".csv":
        return _discover_csv(path, len(stains), images_dir), []
    if path.is_file():
        return [Item(path.stem, path.parent, (path.name,))], []
    raise HpaDataError(f"{path}: not found; pass a folder of {{id}}_{{stain}} images, a CSV (filename(s)[,labels]) "
                       f"or image files")


def _discover_folder(folder: Path, stains: Sequence, skip_bad: bool) -> tuple[list[Item], list]:
    from hpa_zoo.data.images import HPAV18_PLANE

    if any(s is None for s in stains):
        raise ConfigError(f"{folder}: the model takes a stain HPA folders do not have (stains {list(stains)}); "
                          f"list the images in a CSV (filename or filenames) instead")
    found: dict[str, dict[str, str]] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        stem = p.stem
        for color in CHANNELS:
            if stem.endswith(f"_{color}"):
                found.setdefault(stem[: -len(color) - 1], {}).setdefault(color, p.name)
                break
    if not found:
        raise HpaDataError(f"{folder}: no images named {{id}}_{{{','.join(CHANNELS)}}}{{.png,.jpg,.tif}}; pass "
                           f"such a folder, a CSV or a list of image files")
    items, skipped = [], []
    for image_id, files in found.items():
        missing = [s for s in stains if s not in files]
        if missing:
            skipped.append((image_id, f"missing {', '.join(missing)} channel file(s) (has {sorted(files)})"))
            continue
        items.append(Item(image_id, folder, tuple(files[s] for s in stains),
                          tuple(HPAV18_PLANE[s] for s in stains)))
    check_complete(folder, len(items), skipped, stains, skip_bad)
    return items, skipped


def check_complete(folder, n_complete: int, skipped: list, stains: Sequence, skip_bad: bool) -> None:
    """Refuse a folder with incomplete channel sets (``skipped``: (id, reason) pairs) unless ``skip_bad``, and one
    where no image is complete.

    Raises:
        HpaDataError: naming the folder and the first ten incomplete ids.
    """
    if skipped and not skip_bad:
        listed = "; ".join(f"{i}: {why}" for i, why in skipped[:10])
        raise HpaDataError(f"{folder}: {len(skipped)} image(s) have an incomplete channel set ({listed}"
                           f"{' ...' if len(skipped) > 10 else ''}). Add the files, or pass --skip-bad "
                           f"(skip_bad=True) to predict the {n_complete} complete ones")
    if not n_complete:
        raise HpaDataError(f"{folder}: no image has all of the stains {list(stains)}")


def _discover_csv(csv: Path, n_channels: int, images_dir) -> list[Item]:
    table, _ = read_table(csv, n_channels=n_channels, require_labels=False)
    root = Path(images_dir) if images_dir is not None else csv.parent
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    has_labels = "labels" in raw.columns
    ids = list(raw["Id"]) if "Id" in raw.columns else [Path(files[0]).stem for files in table["files"]]
    items = [Item(i, root, tuple(files), labels=tuple(labels) if has_labels else None)
             for i, files, labels in zip(ids, table["files"], table["labels"])]
    return _unique_ids(items)


def _unique_ids(items: list[Item]) -> list[Item]:
    seen: dict[str, int] = {}
    for item in items:
        n = seen.get(item.id, 0)
        seen[item.id] = n + 1
        if n:
            item.id = f"{item.id}#{n}"  # two files with one stem in different folders
    return items


def read_item(item: Item, n_channels: int, size: int, *, pixel_size_um: float | None = None,
              model_pixel_size_um: float | None = None) -> np.ndarray:
    """One item as (size, size, n_channels) uint8 at the model's scale (`hpa_zoo.data.images.fit_to_model`)."""
    from hpa_zoo.data.images import fit_to_model, read_channel, to_uint8

    if item.planes is not None:  # HPA layout: one grayscale (or HPAv18 colour) file per stain
        planes = [to_uint8(read_channel(item.root / f, plane=pl, expect_dtype="any"))
                  for f, pl in zip(item.files, item.planes)]
        if len({p.shape for p in planes}) != 1:
            raise HpaDataError(f"{item.root}: the channels of {item.id!r} have different sizes "
                               f"{[p.shape for p in planes]}")
        image = np.stack(planes, axis=-1)
    else:
        image = read_image(item.root, item.files, n_channels, None, where=f"image {item.id!r}: ")
    if image.shape[-1] != n_channels:
        raise HpaDataError(f"image {item.id!r} ({item.root / item.files[0]}): {image.shape[-1]} channels, the model "
                           f"takes {n_channels}")
    return fit_to_model(image, size, pixel_size_um=pixel_size_um, model_pixel_size_um=model_pixel_size_um)
