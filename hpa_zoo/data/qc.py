"""Image quality control as the competition organisers did it (Ouyang et al. 2019, Methods; docs/teams.md §0.1).

The competition images were kept only if they showed enough whole cells and some protein signal:

* **cells** (red, microtubule channel): Gaussian filter, Otsu threshold, objects smaller than 8,000 px at full
  resolution removed, objects touching the image border excluded; at least 5 cells must remain;
* **contrast** (green, protein channel): ``skimage.exposure.is_low_contrast(fraction_threshold=0.2,
  upper_percentile=99.99)``; low-contrast images were discarded.

`qc_image` applies both to one image with scikit-image; the minimum object size scales with the image's resolution
(``scale`` = full-resolution side / this side: the 512 px Kaggle PNGs are 2048 px fields downscaled 4 x, so 8,000 px
become 500). The Gaussian's width is not stated in the paper: hpa-zoo uses sigma = 4 px at full resolution (1 px at
512), scaled the same way. `qc_folder` runs it over a Kaggle / HPAv18-layout folder in worker processes, with a
progress bar, and writes ``qc.csv`` (one row per image), ``qc_summary.json`` and optionally the filtered label CSV.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hpa_zoo.errors import ConfigError

log = logging.getLogger(__name__)

#: Ouyang et al. 2019, Methods: objects below this area (px at full resolution) are not cells
MIN_OBJECT_PX_FULL_RES = 8000
#: ... and an image needs at least this many cells not touching the border
MIN_CELLS = 5
#: green-channel contrast test of the paper (skimage.exposure.is_low_contrast arguments)
LOW_CONTRAST = {"fraction_threshold": 0.2, "upper_percentile": 99.99}
#: hpa-zoo's choice (not in the paper): Gaussian sigma in px at full resolution
SIGMA_FULL_RES = 4.0
#: full-resolution side of the HPA fields (docs/teams.md §0.1)
FULL_RES_PX = 2048


@dataclass(frozen=True)
class QCResult:
    """The checks of one image.

    Attributes:
        id: image id.
        cells: red-channel objects of at least the minimum size.
        border_cells: those touching the image border (excluded).
        counted_cells: cells - border_cells (the paper's count).
        green_low_contrast: the green channel is low-contrast (`LOW_CONTRAST`).
        passed: counted_cells >= the minimum and not low-contrast.
        reason: why it failed ("" if it passed).
    """

    id: str
    cells: int
    border_cells: int
    counted_cells: int
    green_low_contrast: bool
    passed: bool
    reason: str


def qc_image(red: np.ndarray, green: np.ndarray, *, image_id: str = "", scale: float = 1.0,
             min_cells: int = MIN_CELLS, min_object_px_full_res: float = MIN_OBJECT_PX_FULL_RES) -> QCResult:
    """The paper's two checks on one field of view.

    Args:
        red, green: (H, W) uint8 or uint16 channels (microtubules, protein).
        image_id: for the result.
        scale: full-resolution side / this image's side (4 for a 512 px Kaggle PNG of a 2048 px field).
        min_cells: cells (not touching the border) an image needs.
        min_object_px_full_res: smallest cell area at full resolution (divided by scale² here).

    Returns:
        `QCResult`.

    Raises:
        ConfigError: channels of different shapes, or a scale / minimum that is not positive.
    """
    from skimage import exposure, filters, measure, morphology, segmentation

    red, green = np.asarray(red), np.asarray(green)
    if red.shape != green.shape or red.ndim != 2:
        raise ConfigError(f"qc_image({image_id!r}): red {red.shape} and green {green.shape} must be the same 2-D shape")
    if not (scale > 0 and min_object_px_full_res > 0 and min_cells >= 0):
        raise ConfigError(f"qc_image: scale={scale}, min_object_px_full_res={min_object_px_full_res} must be > 0 and "
                          f"min_cells={min_cells} >= 0")
    smooth = filters.gaussian(red.astype(np.float64), sigma=SIGMA_FULL_RES / scale, preserve_range=True)
    if float(smooth.max()) == float(smooth.min()):  # blank: Otsu has nothing to split
        mask = np.zeros(red.shape, bool)
    else:
        mask = smooth > filters.threshold_otsu(smooth)
    min_px = max(1, int(round(min_object_px_full_res / scale ** 2)))
    mask = morphology.remove_small_objects(mask, max_size=min_px - 1) if min_px > 1 else mask
    labels = measure.label(mask)
    cells = int(labels.max())
    inner = int(len(np.unique(segmentation.clear_border(labels))) - 1)
    low = bool(exposure.is_low_contrast(green, **LOW_CONTRAST))
    reasons = []
    if inner < min_cells:
        reasons.append(f"{inner} cells not touching the border < {min_cells}"
                       + (f" ({cells - inner} touch it)" if cells > inner else ""))
    if low:
        reasons.append("green channel is low-contrast")
    return QCResult(image_id, cells, cells - inner, inner, low, not reasons, "; ".join(reasons))


def _qc_item(args) -> QCResult:
    """One folder item (worker process): read red and green, scale = the fixed one or full_res_px / its side."""
    item, scale, full_res_px, min_cells, min_px = args
    from hpa_zoo.data.images import read_channel

    red, green = (read_channel(item.root / f, plane=p, expect_dtype="any") for f, p in zip(item.files, item.planes))
    return qc_image(red, green, image_id=item.id, scale=scale or full_res_px / max(red.shape),
                    min_cells=min_cells, min_object_px_full_res=min_px)


def qc_folder(folder, *, out_dir, full_res_px: int | None = FULL_RES_PX, scale: float | None = None,
              min_cells: int = MIN_CELLS, min_object_px_full_res: float = MIN_OBJECT_PX_FULL_RES,
              write_filtered=None, labels_csv=None, workers: int | None = None, skip_bad: bool = False,
              progress: bool = True) -> dict:
    """Quality-control every image of a Kaggle / HPAv18-layout folder (``{id}_red`` and ``{id}_green`` files).

    Args:
        folder: the image folder (e.g. Kaggle ``train/``).
        out_dir: where ``qc.csv`` and ``qc_summary.json`` go.
        full_res_px: the full-resolution side the images were downscaled from (2048 for the Kaggle PNGs; 3072 for
            the larger fields); the scale of each image is full_res_px / its side.
        scale: a fixed scale for every image instead.
        min_cells, min_object_px_full_res: the paper's thresholds (`qc_image`).
        write_filtered: a CSV path to write the passing rows of ``labels_csv`` (or just their ids) to.
        labels_csv: the ``Id,Target`` CSV of the folder (default ``folder/../train.csv`` when present).
        workers: processes (default the CPU count).
        skip_bad: skip incomplete channel sets instead of refusing them.
        progress: a progress bar on stderr.

    Returns:
        The summary dict (``n_images``, ``passed``, ``failed``, counts per reason, paths written).

    Raises:
        ConfigError / HpaDataError: bad arguments, a folder without images, unreadable files (named).
    """
    import pandas as pd
    from tqdm import tqdm

    from hpa_zoo.atomic import atomic_to_csv, atomic_write_text
    from hpa_zoo.data.user_images import discover

    if workers is not None and workers < 1:
        raise ConfigError(f"workers={workers}: use >= 1")
    if scale is None and not (full_res_px and full_res_px > 0):
        raise ConfigError(f"full_res_px={full_res_px}: give the full-resolution side (e.g. 2048) or a scale")
    folder, out_dir = Path(folder), Path(out_dir)
    items, skipped = discover(folder, stains=["red", "green"], skip_bad=skip_bad)
    jobs = [(it, scale, full_res_px, min_cells, min_object_px_full_res) for it in items]
    n_workers = workers or os.cpu_count() or 1
    results: list[QCResult] = []
    with tqdm(total=len(jobs), desc="qc", unit="img", disable=not progress) as bar:
        if n_workers == 1 or len(jobs) < 4:
            for job in jobs:
                results.append(_qc_item(job))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=n_workers) as pool:
                for res in pool.map(_qc_item, jobs, chunksize=8):
                    results.append(res)
                    bar.update()
    frame = pd.DataFrame([asdict(r) for r in results])
    written = {"qc_csv": str(atomic_to_csv(frame, out_dir / "qc.csv"))}
    reasons: dict[str, int] = {}
    for r in results:
        for part in filter(None, r.reason.split("; ")):
            key = "too few cells" if "cells not touching" in part else part
            reasons[key] = reasons.get(key, 0) + 1
    passed = [r.id for r in results if r.passed]
    if write_filtered is not None:
        csv = Path(labels_csv) if labels_csv else folder.parent / "train.csv"
        if csv.is_file():
            table = pd.read_csv(csv, dtype=str, keep_default_na=False)
            table = table[table["Id"].isin(set(passed))]
        else:
            table = pd.DataFrame({"Id": passed})
        written["filtered_csv"] = str(atomic_to_csv(table, Path(write_filtered)))
    summary = {"n_images": len(results), "passed": len(passed), "failed": len(results) - len(passed),
               "reasons": reasons, "skipped": [list(s) for s in skipped], "min_cells": min_cells,
               "min_object_px_full_res": min_object_px_full_res, "full_res_px": full_res_px, "scale": scale,
               **written}
    written["summary"] = str(atomic_write_text(out_dir / "qc_summary.json", json.dumps(summary, indent=2)))
    summary["summary"] = written["summary"]
    log.info("qc: %d of %d images pass (%s)", len(passed), len(results), reasons or "no failures")
    return summary
