"""Ids are names, never paths: the one check every reader applies before it turns CSV text into a file path.

A label CSV from the web (HPAv18 lists are passed around) must not be able to point a reader at arbitrary
files. No Kaggle or HPAv18 id contains a path separator, so

* `check_image_id` refuses an ``Id`` with ``/`` or ``\\``, ``..``, a drive prefix (``C:``), a NUL or a control
  character (used by `hpa_zoo.data.labels.read_labels_csv`, hence by the folder pipelines, the TFDS builders, folds,
  predict and evaluate, and by `hpa_zoo.data.sources.folder_dataset` / `hpa_zoo.data.images.find_channel_file` for ids
  passed directly);
* `resolve_inside` accepts a relative file name that may name sub-folders (the fine-tuning CSV's ``filename`` /
  ``filenames``) but refuses absolute paths, ``..`` parts and NULs, and a path (or symlink) that resolves outside
  the image folder.
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from hpa_zoo.errors import HpaDataError

_DRIVE = re.compile(r"^[A-Za-z]:")
_ID_FIX = ("an image id is a file-name stem such as '00070df0-bbc3-11e8-b2bc-ac1f6b6435d0' or "
           "'10580_1610_C1_1' (the image files are {Id}_{stain}.png in the image folder); fix the Id or remove "
           "the row")


#: Anything `_what_is_wrong_with_id` refuses (one regex: the check runs on every CSV row).
SUSPICIOUS_ID = re.compile(r"[\x00-\x1f/\\:]|\.\.|^~|^\.$")


def _what_is_wrong_with_id(image_id: str) -> str | None:
    if SUSPICIOUS_ID.search(image_id) is None:
        return None
    if "\x00" in image_id:
        return "a NUL character"
    if any(ord(ch) < 32 for ch in image_id):
        return "a control character"
    if "/" in image_id or "\\" in image_id:
        return "a path separator"
    if ".." in image_id:
        return "'..'"
    if _DRIVE.match(image_id) or ":" in image_id:
        return "a drive prefix or ':'"
    if image_id in (".", "~") or image_id.startswith("~"):
        return "a special path name"
    return None


def check_image_id(image_id: str, where: str = "") -> str:
    """Return `image_id` unchanged if it is a plain name; raise otherwise.

    Args:
        image_id: the ``Id`` text (already stripped).
        where: the location for the message, e.g. ``"train.csv line 3 (Id ../x)"``.
    Raises:
        HpaDataError: the id contains a path separator, ``..``, a drive prefix / ``:``, a NUL or a control
            character; the message names `where`, the id and the fix.
    """
    problem = _what_is_wrong_with_id(str(image_id))
    if problem is not None:
        prefix = f"{where}: " if where else ""
        raise HpaDataError(f"{prefix}Id {str(image_id)!r} contains {problem}, so it would be read as a path "
                           f"outside the image folder; {_ID_FIX}")
    return image_id


def check_relative_name(name: str, where: str = "") -> str:
    """Check a CSV file name that may name sub-folders (``plate1/a.png``) without touching the disk.

    Raises:
        HpaDataError: an absolute path, a drive prefix, a ``..`` part, a NUL or a control character.
    """
    prefix = f"{where}: " if where else ""
    fix = ("give a path relative to the image folder (--images-dir), e.g. 'plate1/img_01.tif', or move the file "
           "into that folder")
    text = str(name)
    if "\x00" in text or any(ord(ch) < 32 for ch in text):
        raise HpaDataError(f"{prefix}file name {text!r} contains a NUL or control character; {fix}")
    if text.startswith(("/", "\\")) or _DRIVE.match(text) or PureWindowsPath(text).anchor:
        raise HpaDataError(f"{prefix}file name {text!r} is an absolute path; {fix}")
    if ".." in PurePosixPath(text.replace("\\", "/")).parts:
        raise HpaDataError(f"{prefix}file name {text!r} has a '..' part, which leaves the image folder; {fix}")
    return text


def resolve_inside(root: str | os.PathLike, name: str, where: str = "") -> Path:
    """``root / name`` after `check_relative_name`, refused if it (or a symlink on the way) resolves outside `root`.

    Returns:
        The joined path (not resolved: messages keep the user's spelling).
    Raises:
        HpaDataError: as `check_relative_name`, or the path resolves outside `root`.
    """
    check_relative_name(name, where)
    root = Path(root)
    path = root / str(name).replace("\\", "/")
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        prefix = f"{where}: " if where else ""
        raise HpaDataError(f"{prefix}{path} resolves to {real}, outside the image folder {real_root} (a symlink "
                           f"out of it?); copy the file into the folder or pass the folder that holds it as "
                           f"--images-dir")
    return path
