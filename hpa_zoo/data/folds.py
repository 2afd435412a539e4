"""Leak-aware multilabel stratified K folds: near-duplicate fields of view always land in the same fold.

1. `image_hashes`: a perceptual hash (pHash) of the R, G and B stains of every image (teams.md §0.4).
2. `duplicate_groups`: two images are duplicates when all three channel hashes are within Hamming distance 12
   (Team 1's rule, teams.md §0.4); groups are closed transitively with union-find (Team 3, teams.md §3.4).
3. `make_folds`: ``MultilabelStratifiedKFold(n_splits=5, shuffle=True, random_state=100)`` (Team 1, teams.md
   §1.4) applied to the groups, so a group is never split between train and validation.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Literal, Sequence

import cv2
import numpy as np
import pandas as pd

from hpa_zoo.atomic import atomic_to_csv
from hpa_zoo.checks import positive_int
from hpa_zoo.constants import NUM_CLASSES, is_kaggle_id
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.data.images import load_rgby
from hpa_zoo.data.labels import multi_hot_matrix, parse_target

#: teams.md §0.4: Hamming distance <= 12 on each of the R, G, B pHashes (bestfitting s5_train_match_external.py).
MAX_HAMMING_DISTANCE = 12
#: teams.md §1.4: Team 1's fold split.
N_SPLITS = 5
SEED = 100
#: Every image is brought to this size before hashing (INTER_AREA), so one field of view stored at another
#: resolution (2048 px HPAv18 JPEG vs 512 px Kaggle PNG) hashes the same. 512 = the Kaggle PNG size (§0.1).
HASH_IMAGE_SIZE = 512
#: Stains that are hashed (teams.md §0.4: R, G, B; yellow is not used).
HASH_CHANNELS = (0, 1, 2)

FOLDS_COLUMNS = ("Id", "fold", "source", "group")


# ============================================================================================ hashing
def _phash64(plane: np.ndarray) -> np.uint64:
    """pHash (imagehash, 8x8 = 64 bits) of one (H, W) uint8 plane, packed into a uint64."""
    import imagehash
    from PIL import Image

    bits = imagehash.phash(Image.fromarray(plane)).hash.reshape(-1)
    return np.uint64(int.from_bytes(np.packbits(bits).tobytes(), "big"))


def image_hashes(
    images_dir: str | os.PathLike,
    ids: Sequence[str],
    *,
    layout: Literal["kaggle", "hpav18"] = "kaggle",
    progress: bool = False,
    workers: int = 1,
) -> np.ndarray:
    """pHash of the R, G and B stains of each image.

    Each image is read with `hpa_zoo.data.images.load_rgby` and resized to `HASH_IMAGE_SIZE` first, so the same
    field of view at another resolution (or re-encoded) gives (nearly) the same hashes.

    Args:
        images_dir: folder with ``{Id}_{red,green,blue,yellow}`` files.
        ids: the image ids, N of them.
        layout: ``"kaggle"`` (grayscale PNGs) or ``"hpav18"`` (RGB JPEGs, plane per stain).
        progress: show a tqdm progress bar.
        workers: threads reading images (OpenCV decoding releases the GIL).
    Returns:
        (N, 3) uint64: 64-bit pHashes of R, G, B, in the order of `ids`.
    Raises:
        HpaDataError: a missing or unreadable channel file (the message names it).
    """
    def one(image_id: str) -> list[np.uint64]:
        rgby = load_rgby(images_dir, image_id, layout=layout, size=HASH_IMAGE_SIZE, interpolation=cv2.INTER_AREA)
        return [_phash64(np.ascontiguousarray(rgby[..., c])) for c in HASH_CHANNELS]

    ids = list(ids)
    workers = positive_int(workers, "workers", hint="threads reading images")
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(workers)
        rows: Iterable = pool.map(one, ids)
    else:
        pool, rows = None, map(one, ids)
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, total=len(ids), desc=f"hashing {Path(images_dir).name}", unit="img")
    try:
        out = np.array(list(rows), dtype=np.uint64).reshape(len(ids), len(HASH_CHANNELS))
    finally:
        if pool is not None:
            pool.shutdown()
    return out


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of uint64 hashes, broadcasting: (...) uint64 x (...) uint64 -> (...) int."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def duplicate_groups(hashes: np.ndarray, max_distance: int = MAX_HAMMING_DISTANCE,
                     block_elements: int = 1 << 23) -> np.ndarray:
    """Group near-duplicate images: pairs within `max_distance` on EVERY hashed channel, closed transitively.

    All pairs are compared in row blocks (first on channel 0, then the surviving pairs on the others), each
    block holding about `block_elements` distances, so memory stays bounded for 100k images.

    Args:
        hashes: (N, K) uint64 from `image_hashes` (K = 3 for R, G, B).
        max_distance: Hamming threshold, inclusive (teams.md §0.4: 12).
        block_elements: distances computed at once (rows per block = block_elements // N).
    Returns:
        (N,) int64 group ids, 0..G-1 numbered by first appearance; duplicates share an id.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    if hashes.ndim != 2:
        raise ConfigError(f"duplicate_groups: hashes must be (N, K) uint64, got shape {hashes.shape}")
    n = hashes.shape[0]
    block_size = max(1, block_elements // max(n, 1))
    uf = _UnionFind(n)
    for start in range(0, n, block_size):
        block = hashes[start:start + block_size]
        close = hamming(block[:, None, 0], hashes[None, :, 0]) <= max_distance
        rows, cols = np.nonzero(close)
        rows = rows + start
        keep = cols > rows  # each unordered pair once, no self pairs
        rows, cols = rows[keep], cols[keep]
        for ch in range(1, hashes.shape[1]):
            keep = hamming(hashes[rows, ch], hashes[cols, ch]) <= max_distance
            rows, cols = rows[keep], cols[keep]
        for i, j in zip(rows.tolist(), cols.tolist()):
            uf.union(i, j)
    roots = np.array([uf.find(i) for i in range(n)], dtype=np.int64)
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse].astype(np.int64)


# ============================================================================================ folds
def _label_matrix(df: pd.DataFrame, num_classes: int) -> np.ndarray:
    if "labels" in df.columns:
        return multi_hot_matrix([tuple(x) for x in df["labels"]], num_classes)
    if "Target" in df.columns:
        return multi_hot_matrix([parse_target(t, where=f"row {i} (Id {image_id})", num_classes=num_classes)
                                 for i, (image_id, t) in enumerate(zip(df["Id"], df["Target"]))], num_classes)
    raise HpaDataError(f"make_folds: the table has columns {list(df.columns)}; it needs 'Id' and 'labels' "
                       f"(tuples, from hpa_zoo.data.labels.read_labels_csv) or 'Target' strings")


def make_folds(
    df: pd.DataFrame,
    *,
    n_splits: int = N_SPLITS,
    seed: int = SEED,
    groups: Sequence[int] | np.ndarray | None = None,
    num_classes: int = NUM_CLASSES,
) -> pd.DataFrame:
    """Multilabel stratified K folds over duplicate groups (every group lands in exactly one fold).

    ``iterstrat.ml_stratifiers.MultilabelStratifiedKFold(n_splits, shuffle=True, random_state=seed)`` (Team 1,
    teams.md §1.4) is run on the groups; a group's label vector is the union of its members' labels. Two
    extra columns, "is Kaggle" and "is HPAv18", are stratified as well, so each fold holds its share of both
    sources (Team 1 split the two sources separately and joined fold i of each).

    Args:
        df: N rows with ``Id`` and ``labels`` (tuples of class ids, as from `hpa_zoo.data.labels.read_labels_csv`)
            or ``Target`` strings; an optional ``source`` column (``"kaggle"``/``"hpav18"``), else it is
            derived from the id form (`hpa_zoo.constants.is_kaggle_id`).
        n_splits: number of folds.
        seed: the shuffle seed.
        groups: (N,) group ids (from `duplicate_groups`); None: every image is its own group.
        num_classes: number of classes.
    Returns:
        DataFrame with N rows in `df` order, columns ``Id`` (str), ``fold`` (int64, 0..n_splits-1),
        ``source`` (str) and ``group`` (int64).
    Raises:
        HpaDataError: duplicate or missing ids, bad labels, `groups` of the wrong length.
        ConfigError: fewer groups than folds, or n_splits < 2.
    """
    if "Id" not in df.columns:
        raise HpaDataError(f"make_folds: the table has no 'Id' column (columns {list(df.columns)})")
    ids = df["Id"].astype(str).tolist()
    dup = pd.Index(ids)[pd.Index(ids).duplicated()].unique().tolist()
    if dup:
        raise HpaDataError(f"make_folds: duplicate Id(s) {dup[:3]}; each image may appear once (drop the "
                           f"repeated rows or merge their labels)")
    n = len(ids)
    y = _label_matrix(df, num_classes)
    if "source" in df.columns:
        source = df["source"].astype(str).to_numpy()
    else:
        source = np.array(["kaggle" if is_kaggle_id(i) else "hpav18" for i in ids], dtype=object)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if groups.shape != (n,):
        raise HpaDataError(f"make_folds: groups has shape {groups.shape} but there are {n} images; pass one "
                           f"group id per row (hpa_zoo.data.folds.duplicate_groups)")
    if n_splits < 2:
        raise ConfigError(f"make_folds: n_splits={n_splits}; use 2 or more folds")
    uniq, group_index = np.unique(groups, return_inverse=True)
    if len(uniq) < n_splits:
        raise ConfigError(f"make_folds: only {len(uniq)} duplicate group(s) for {n_splits} folds; "
                          f"use fewer folds or more images")
    strat = np.concatenate([y, (source == "kaggle")[:, None], (source != "kaggle")[:, None]], axis=1)
    group_y = np.zeros((len(uniq), strat.shape[1]), np.uint8)
    np.maximum.at(group_y, group_index, strat.astype(np.uint8))

    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    kfold = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    group_fold = np.full(len(uniq), -1, np.int64)
    for fold, (_, valid) in enumerate(kfold.split(np.zeros((len(uniq), 1)), group_y)):
        group_fold[valid] = fold
    return pd.DataFrame({"Id": ids, "fold": group_fold[group_index], "source": source,
                         "group": group_index.astype(np.int64)})


def save_folds(folds: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a folds table (``Id,fold[,source,group]``) to CSV atomically; returns the path."""
    cols = [c for c in FOLDS_COLUMNS if c in folds.columns]
    return atomic_to_csv(folds[cols], path)


def load_folds(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a folds CSV written by `save_folds` (or any ``Id,fold`` CSV).

    Returns:
        DataFrame with ``Id`` (str), ``fold`` (int64, 0..K-1 with every fold non-empty) and the optional
        ``source``/``group`` columns.
    Raises:
        HpaDataError: missing file or column, empty/duplicate Id, a non-integer or negative fold, or a fold
            number with no rows; the message gives the CSV line.
    """
    path = Path(path)
    if not path.is_file():
        raise HpaDataError(f"{path}: folds CSV not found; create it with `hpa-zoo folds --kaggle-dir DIR --out {path}`")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except Exception as exc:  # pandas raises many types for unreadable files
        raise HpaDataError(f"{path}: cannot be read as CSV ({exc}); expected a header 'Id,fold'") from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("Id", "fold") if c not in df.columns]
    if missing:
        raise HpaDataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}; a folds CSV has the "
                           f"header 'Id,fold' (written by `hpa-zoo folds`)")
    if df.empty:
        raise HpaDataError(f"{path}: has no rows; regenerate it with `hpa-zoo folds`")
    df["Id"] = df["Id"].str.strip()
    seen: dict[str, int] = {}
    folds = np.empty(len(df), np.int64)
    for i, (image_id, fold) in enumerate(zip(df["Id"], df["fold"])):
        line = i + 2
        if not image_id:
            raise HpaDataError(f"{path.name} line {line}: empty Id; every row needs an image id")
        if image_id in seen:
            raise HpaDataError(f"{path.name} line {line}: duplicate Id {image_id!r}, first on line {seen[image_id]}; "
                               f"an image belongs to exactly one fold")
        seen[image_id] = line
        text = str(fold).strip()
        if not text.isdigit():
            raise HpaDataError(f"{path.name} line {line} (Id {image_id}): fold {fold!r} is not a non-negative "
                               f"integer; folds are numbered 0..K-1")
        folds[i] = int(text)
    df["fold"] = folds
    if "group" in df.columns:
        df["group"] = pd.to_numeric(df["group"], errors="coerce").fillna(-1).astype(np.int64)
    empty = sorted(set(range(int(folds.max()) + 1)) - set(folds.tolist()))
    if empty:
        raise HpaDataError(f"{path}: fold(s) {empty} have no rows (found folds {sorted(set(folds.tolist()))}); "
                           f"folds must be numbered 0..K-1 without gaps; regenerate the file with `hpa-zoo folds`")
    return df


def fold_split(folds: pd.DataFrame, fold: int) -> tuple[list[str], list[str]]:
    """Ids for training and validation of one fold.

    Args:
        folds: a table from `make_folds` / `load_folds`.
        fold: 0..K-1.
    Returns:
        (train_ids, valid_ids): lists of str in table order; valid = rows with this fold, train = the rest.
    Raises:
        ConfigError: `fold` is not one of the table's folds.
    """
    available = sorted(int(f) for f in pd.unique(folds["fold"]))
    if fold not in available:
        raise ConfigError(f"fold {fold} is not in the folds table (folds {available}); pick one of them")
    is_valid = (folds["fold"] == fold).to_numpy()
    ids = folds["Id"].astype(str).to_numpy()
    return ids[~is_valid].tolist(), ids[is_valid].tolist()


# ============================================================================================ folders -> folds
def find_labelled_folder(root: str | os.PathLike, csv_names: Sequence[str]) -> tuple[Path, Path]:
    """Locate the labels CSV and the image folder of a downloaded dataset.

    The CSV is the first of `csv_names` found in `root`; the images are in ``root/train`` if that holds
    ``*_red.*`` files, else ``root/images``, else `root` itself.

    Returns:
        (csv_path, images_dir).
    Raises:
        HpaDataError: no CSV or no image folder, naming what was looked for.
    """
    root = Path(root)
    csv = next((root / n for n in csv_names if (root / n).is_file()), None)
    if csv is None:
        raise HpaDataError(f"{root}: no label CSV found (looked for {', '.join(csv_names)}); put the dataset's "
                           f"Id,Target CSV there")
    for images_dir in (root / "train", root / "images", root):
        if images_dir.is_dir() and any(images_dir.glob("*_red.*")):
            return csv, images_dir
    raise HpaDataError(f"{root}: no images found (looked for *_red.* files in train/, images/ and {root} itself)")


KAGGLE_CSV_NAMES = ("train.csv",)
HPAV18_CSV_NAMES = ("HPAv18RBGY_wodpl.csv", "HPAv18RGBY_WithoutUncertain_wodpl.csv", "HPAv18.csv", "labels.csv",
                    "train.csv")


def folds_for_folders(
    kaggle_dir: str | os.PathLike | None,
    hpav18_dir: str | os.PathLike | None = None,
    *,
    n_splits: int = N_SPLITS,
    seed: int = SEED,
    max_distance: int = MAX_HAMMING_DISTANCE,
    progress: bool = False,
    workers: int = 1,
    group_by_sample: bool = False,
) -> pd.DataFrame:
    """Hash, group and split a Kaggle folder and/or an HPAv18 folder together (what ``hpa-zoo folds`` runs).

    Args:
        kaggle_dir: folder with ``train.csv`` and ``train/`` (Kaggle layout), or None.
        hpav18_dir: folder with an HPAv18 CSV (e.g. ``HPAv18RBGY_wodpl.csv``) and its JPEGs, or None.
        n_splits, seed, max_distance: see `make_folds` and `duplicate_groups`.
        progress, workers: see `image_hashes`.
        group_by_sample: also keep all images of one sample together: the CSVs' ``Sample`` column (e.g. from
            ``hpa-zoo synth --fields-per-sample``) is merged with the pHash groups (`merge_groups`); an empty
            Sample cell leaves the image to its pHash group.
    Returns:
        The `make_folds` table over all images (Kaggle rows first).
    Raises:
        ConfigError: no folder, n_splits < 2, a negative max_distance or workers < 1 (before any image is read).
        HpaDataError: a missing folder or CSV, a bad CSV row, or ``group_by_sample`` with a CSV that has no
            ``Sample`` column.
    """
    from hpa_zoo.data.labels import read_labels_csv

    positive_int(n_splits, "n_splits", minimum=2, hint="CLI: --n-splits; use 2 or more folds")
    positive_int(max_distance, "max_distance", minimum=0, hint="the Hamming threshold of duplicate pHashes")
    positive_int(workers, "workers", hint="threads reading images")
    parts, hashes = [], []
    sources = [(kaggle_dir, KAGGLE_CSV_NAMES, "kaggle"), (hpav18_dir, HPAV18_CSV_NAMES, "hpav18")]
    for root, csv_names, source in sources:
        if root is None:
            continue
        csv, images_dir = find_labelled_folder(root, csv_names)
        df = read_labels_csv(csv)
        df["source"] = source
        if group_by_sample:
            df["Sample"] = _sample_column(csv, df["Id"])
        hashes.append(image_hashes(images_dir, df["Id"].tolist(), layout=source, progress=progress,
                                   workers=workers))
        parts.append(df)
    if not parts:
        raise ConfigError("folds: give --kaggle-dir and/or --hpav18-dir")
    table = pd.concat(parts, ignore_index=True)
    groups = duplicate_groups(np.concatenate(hashes), max_distance=max_distance)
    if group_by_sample:
        samples = table["Sample"].to_numpy(dtype=object)
        sample_groups = np.where(samples == "", -1 - np.arange(len(samples)),
                                 pd.factorize(samples)[0])  # an empty cell: a group of its own
        groups = merge_groups(groups, sample_groups)
    return make_folds(table, n_splits=n_splits, seed=seed, groups=groups)


def _sample_column(csv: Path, ids: pd.Series) -> pd.Series:
    """The ``Sample`` cell of every id of ``csv`` (str, "" when empty); HpaDataError naming the file when the
    column is missing."""
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    raw.columns = [str(c).strip() for c in raw.columns]
    if "Sample" not in raw.columns:
        raise HpaDataError(f"{csv}: --group-by-sample needs a 'Sample' column (columns {list(raw.columns)}); add "
                           f"one naming each image's sample (antibody + cell line), or drop --group-by-sample")
    mapping = dict(zip(raw["Id"].str.strip(), raw["Sample"].str.strip()))
    return ids.map(mapping).fillna("").astype(str)


def merge_groups(*groupings: Sequence[int] | np.ndarray) -> np.ndarray:
    """Join several groupings of the same N images: two images share a group when any grouping puts them
    together, closed transitively (union-find).

    Args:
        groupings: each (N,) integer group ids (e.g. `duplicate_groups` and the factorised Sample column).
    Returns:
        (N,) int64 group ids, 0..G-1 numbered by first appearance.
    Raises:
        ConfigError: groupings of different lengths.
    """
    arrays = [np.asarray(g).reshape(-1) for g in groupings]
    n = len(arrays[0]) if arrays else 0
    if any(len(a) != n for a in arrays):
        raise ConfigError(f"merge_groups: groupings of lengths {[len(a) for a in arrays]}; give one id per image")
    uf = _UnionFind(n)
    for a in arrays:
        first: dict = {}
        for i, g in enumerate(a.tolist()):
            uf.union(first.setdefault(g, i), i)
    roots = [uf.find(i) for i in range(n)]
    return pd.factorize(np.asarray(roots))[0].astype(np.int64)
