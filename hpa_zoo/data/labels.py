"""Reading `Id,Target` label CSVs (Kaggle train.csv, HPAv18 CSVs, sample_submission.csv) with clear errors.

Every reader of labels in hpa-zoo (TFDS builders, folder pipelines, folds, evaluation) goes through here,
so a malformed row is reported the same way everywhere: file, 1-based CSV line, the bad value, and the fix.
"""
from __future__ import annotations

import functools
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import pandas as pd

from hpa_zoo.constants import NUM_CLASSES
from hpa_zoo.errors import HpaDataError
from hpa_zoo.remote import base_name, is_file, is_remote, open_file
from hpa_zoo.safepaths import check_image_id

OnError = Literal["raise", "skip"]


@dataclass
class SkipReport:
    """What was skipped when `on_error="skip"`: a list of (what, reason) pairs, printable for the user."""

    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, reason: str) -> None:
        """Record that ``what`` (a file, id or CSV line) was skipped and why (``reason``, shown to the user)."""
        self.skipped.append((what, reason))

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self, limit: int = 20) -> str:
        """A human-readable summary: the count, then up to `limit` entries."""
        if not self.skipped:
            return "skipped 0 samples"
        lines = [f"skipped {len(self.skipped)} sample(s):"]
        lines += [f"  {w}: {r}" for w, r in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more")
        return "\n".join(lines)


def parse_target(text, *, where: str = "Target", num_classes: int = NUM_CLASSES) -> tuple[int, ...]:
    """Parse a Kaggle ``Target`` string (space-separated class ids, any order) into sorted unique ints.

    Args:
        text: e.g. ``"7 1 2 0"``. Must hold at least one id.
        where: a location for the error message, e.g. ``"train.csv line 12 (Id abc)"``.
        num_classes: valid ids are ``0 .. num_classes-1``.
    Returns:
        Sorted tuple of distinct class ids.
    Raises:
        HpaDataError: empty/NaN value, a token that is not an integer, or an id outside the range.
    """
    if text is None or (isinstance(text, float) and np.isnan(text)):
        raise HpaDataError(f"{where}: Target is empty; give at least one class id 0..{num_classes - 1} "
                           f"separated by spaces, e.g. '16 0'")
    tokens = str(text).replace(",", " ").replace(";", " ").split()
    if not tokens:
        raise HpaDataError(f"{where}: Target is empty; give at least one class id 0..{num_classes - 1} "
                           f"separated by spaces, e.g. '16 0'")
    ids = []
    for tok in tokens:
        try:
            value = int(tok)
        except ValueError:
            raise HpaDataError(f"{where}: Target {str(text)!r} has {tok!r}, which is not an integer class id; "
                               f"write space-separated ids 0..{num_classes - 1}, e.g. '16 0'") from None
        if not 0 <= value < num_classes:
            raise HpaDataError(f"{where}: Target {str(text)!r} has class id {value}, outside 0..{num_classes - 1}; "
                               f"fix the label or remove the row")
        ids.append(value)
    return tuple(sorted(set(ids)))


def to_multi_hot(labels: Sequence[int], num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Class ids -> multi-hot vector, shape (num_classes,), dtype uint8."""
    out = np.zeros((num_classes,), np.uint8)
    out[list(labels)] = 1
    return out


def multi_hot_matrix(label_lists: Sequence[Sequence[int]], num_classes: int = NUM_CLASSES) -> np.ndarray:
    """List of class-id lists -> multi-hot matrix, shape (N, num_classes), dtype uint8 (one scatter, no loop)."""
    label_lists = list(label_lists)
    out = np.zeros((len(label_lists), num_classes), np.uint8)
    lengths = np.fromiter(map(len, label_lists), np.int64, count=len(label_lists))
    cols = np.fromiter(itertools.chain.from_iterable(label_lists), np.int64, count=int(lengths.sum()))
    out[np.repeat(np.arange(len(label_lists)), lengths), cols] = 1
    return out


def parse_targets(texts: Sequence, *, where: Callable[[int], str], num_classes: int = NUM_CLASSES,
                  allow_empty: bool = False) -> list[tuple[int, ...]]:
    """`parse_target` of many strings, each distinct one parsed once (a million rows in well under a second).

    Args:
        texts: the Target / Predicted strings, in row order.
        where: row index -> the location for a message, e.g. ``lambda k: f"sub.csv line {k + 2}"``.
        num_classes: valid ids are ``0 .. num_classes-1``.
        allow_empty: an empty string is ``()`` (no label, as in a Kaggle submission) instead of an error.
    Returns:
        One sorted tuple of class ids per text.
    Raises:
        HpaDataError: the first bad row, with `parse_target`'s message at ``where(row)``.
    """
    texts = [str(t).strip() for t in texts]
    parsed = {t: (() if allow_empty and not t else _parse_valid_target(t, num_classes)) for t in set(texts)}
    if any(v is None for v in parsed.values()):
        k = next(k for k, t in enumerate(texts) if parsed[t] is None)
        parse_target(texts[k], where=where(k), num_classes=num_classes)  # raises the row's message
    return [parsed[t] for t in texts]


@functools.lru_cache(maxsize=65536)
def _parse_valid_target(text: str, num_classes: int) -> tuple[int, ...] | None:
    """`parse_target` of a Target string, or None if it is not valid (the caller then reports it row by row)."""
    try:
        return parse_target(text, num_classes=num_classes)
    except HpaDataError:
        return None


def _read_valid_rows(df: pd.DataFrame, require_target: bool, target_column: str,
                     num_classes: int) -> pd.DataFrame | None:
    """`read_labels_csv`'s result without a Python loop per row when no row has a problem, else None.

    Vectorised checks: empty, duplicate and path-like ids (`hpa_zoo.safepaths.SUSPICIOUS_ID`); each distinct
    Target is parsed once. A million-row submission reads in about a second.
    """
    from hpa_zoo.safepaths import SUSPICIOUS_ID

    ids = df["Id"].astype(str).str.strip()
    if (ids == "").any() or ids.duplicated().any() or ids.str.contains(SUSPICIOUS_ID).any():
        return None
    out = pd.DataFrame({"Id": ids.tolist()})
    if require_target:
        targets = df[target_column].astype(str)
        parsed = {t: _parse_valid_target(t, num_classes) for t in targets.unique()}
        if any(v is None for v in parsed.values()):
            return None
        out["Target"] = targets.str.strip().tolist()
        out["labels"] = targets.map(parsed).tolist()
    return out


def read_labels_csv(
    path: str | os.PathLike,
    *,
    require_target: bool = True,
    target_column: str = "Target",
    num_classes: int = NUM_CLASSES,
    on_error: OnError = "raise",
    report: SkipReport | None = None,
) -> pd.DataFrame:
    """Read an ``Id,Target`` CSV (or ``Id,...`` when ``require_target=False``) and validate every row.

    Handles a UTF-8 byte-order mark and Windows line endings. Ids are stripped of white space.

    Args:
        path: the CSV file (a local path or a URL, `hpa_zoo.remote`).
        require_target: parse and validate the ``target_column``; if False only ids are read
            (sample_submission.csv).
        target_column: name of the label column (``Target``, or ``Predicted`` for submissions).
        num_classes: valid class ids are ``0 .. num_classes-1``.
        on_error: ``"raise"`` (default) raises HpaDataError on the first bad row; ``"skip"`` drops the row
            and records it in ``report``.
        report: where skipped rows are recorded (a new one is made if None; it is attached as
            ``df.attrs["skip_report"]``).
    Returns:
        DataFrame with columns ``Id`` (str) and, when ``require_target``, ``Target`` (the original string)
        and ``labels`` (tuple of sorted ints). Row order is the file's.
    Raises:
        HpaDataError: missing file, missing column, empty/malformed/out-of-range Target, duplicate or empty Id,
            an Id that is a path (separator, ``..``, drive prefix, NUL: `hpa_zoo.safepaths.check_image_id`).
    """
    path = path if is_remote(path) else Path(path)
    if not is_file(path):
        raise HpaDataError(f"{path}: label CSV not found; expected a file with header 'Id,{target_column}'")
    try:
        with open_file(path) as f:
            df = pd.read_csv(f, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except Exception as exc:  # pandas raises many types for unreadable files
        raise HpaDataError(f"{path}: cannot be read as CSV ({exc}); expected a header 'Id,{target_column}'") from exc
    df.columns = [str(c).strip() for c in df.columns]
    needed = ["Id"] + ([target_column] if require_target else [])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise HpaDataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}; "
                           f"the header must be 'Id,{target_column}' as in Kaggle's train.csv")
    report = report if report is not None else SkipReport()
    fast = _read_valid_rows(df, require_target, target_column, num_classes)
    if fast is not None:  # every row is valid (the common case): vectorised, same result as the loop below
        fast.attrs["skip_report"] = report
        return fast
    ids, targets, labels = [], [], []
    seen: dict[str, int] = {}
    for i, row in enumerate(df.itertuples(index=False)):
        line = i + 2  # 1-based, after the header
        rec = row._asdict() if hasattr(row, "_asdict") else dict(zip(df.columns, row))
        image_id = str(rec.get("Id", "")).strip()
        where = f"{base_name(path)} line {line}" + (f" (Id {image_id})" if image_id else "")
        try:
            if not image_id:
                raise HpaDataError(f"{where}: empty Id; every row needs an image id")
            check_image_id(image_id, where)  # ids are names, never paths (hpa_zoo.safepaths)
            if image_id in seen:
                raise HpaDataError(f"{where}: duplicate Id {image_id!r}, first seen on line {seen[image_id]}; "
                                   f"remove one of the rows (or merge their Targets)")
            parsed = parse_target(rec[target_column], where=where, num_classes=num_classes) if require_target else None
        except HpaDataError as exc:
            if on_error == "raise":
                raise
            report.add(where, str(exc))
            continue
        seen[image_id] = line
        ids.append(image_id)
        if require_target:
            targets.append(str(rec[target_column]).strip())
            labels.append(parsed)
    out = pd.DataFrame({"Id": ids})
    if require_target:
        out["Target"] = targets
        out["labels"] = labels
    out.attrs["skip_report"] = report
    return out


def format_target(labels: Sequence[int]) -> str:
    """Class ids -> the Kaggle ``Target``/``Predicted`` string (space-separated, ascending)."""
    return " ".join(str(int(i)) for i in sorted(set(int(x) for x in labels)))
