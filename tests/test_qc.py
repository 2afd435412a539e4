"""hpa_zoo.data.qc: the paper's cell-count and contrast checks, on constructed images whose answer is known by
construction and on the real HPA samples against an independent SciPy / NumPy computation."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from hpa_zoo import cli
from hpa_zoo.data import qc
from hpa_zoo.errors import ConfigError


def _discs(centres, radius=18, size=512, value=200):
    img = np.zeros((size, size), np.uint8)
    for cy, cx in centres:
        cv2.circle(img, (cx, cy), radius, value, -1)
    return img


GOOD_GREEN = np.tile(np.linspace(0, 255, 512, dtype=np.uint8), (512, 1))  # full range: not low contrast
INNER = [(100, 100), (100, 300), (250, 200), (400, 120), (400, 380), (250, 420)]  # 6 cells, none on the border


def test_constructed_images_give_the_known_answers():
    ok = qc.qc_image(_discs(INNER), GOOD_GREEN, scale=4)  # 512 px of a 2048 field: cells >= 500 px
    assert (ok.cells, ok.counted_cells, ok.passed) == (6, 6, True)
    blank = qc.qc_image(np.zeros((512, 512), np.uint8), np.zeros((512, 512), np.uint8), scale=4)
    assert blank.cells == 0 and not blank.passed and blank.green_low_contrast
    few = qc.qc_image(_discs(INNER[:3]), GOOD_GREEN, scale=4)
    assert few.counted_cells == 3 and not few.passed and "3 cells not touching the border < 5" in few.reason
    edge = [(0, 60), (0, 250), (511, 100), (511, 400), (200, 0), (300, 511)]  # every cell cut by the border
    border = qc.qc_image(_discs(edge), GOOD_GREEN, scale=4)
    assert (border.cells, border.border_cells, border.counted_cells) == (6, 6, 0) and not border.passed
    tiny = qc.qc_image(_discs(INNER, radius=8), GOOD_GREEN, scale=4)  # ~200 px < 500 px: debris, not cells
    assert tiny.cells == 0 and not tiny.passed
    dull = np.full((512, 512), 90, np.uint8)
    dull[::7, ::5] = 96  # a nearly flat green channel
    low = qc.qc_image(_discs(INNER), dull, scale=4)
    assert low.green_low_contrast and low.counted_cells == 6 and not low.passed and "low-contrast" in low.reason
    # the object size follows the resolution: the same 18 px discs are too small for a full-resolution image
    assert qc.qc_image(_discs(INNER), GOOD_GREEN, scale=1).cells == 0
    with pytest.raises(ConfigError, match="same 2-D shape"):
        qc.qc_image(np.zeros((4, 4)), np.zeros((4, 5)))


def _reference(red: np.ndarray, green: np.ndarray, scale: float) -> tuple[int, int, bool]:
    """Independent: SciPy's Gaussian ('nearest' border, truncate 4 as scikit-image), a NumPy Otsu over a 256-bin
    histogram of the image range, SciPy labelling (4-connectivity), sizes by bincount, border labels from the
    edges, and the contrast ratio written out."""
    smooth = ndimage.gaussian_filter(red.astype(np.float64), sigma=qc.SIGMA_FULL_RES / scale, mode="nearest",
                                     truncate=4.0)
    hist, edges = np.histogram(smooth.ravel(), bins=256, range=(smooth.min(), smooth.max()))
    centres = (edges[:-1] + edges[1:]) / 2
    w1, w2 = np.cumsum(hist), np.cumsum(hist[::-1])[::-1]
    m1 = np.cumsum(hist * centres) / np.maximum(w1, 1)
    m2 = (np.cumsum((hist * centres)[::-1]) / np.maximum(w2[::-1], 1))[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    threshold = centres[:-1][np.argmax(between)]
    labels, n = ndimage.label(smooth > threshold)
    sizes = np.bincount(labels.ravel())
    keep = np.flatnonzero(sizes >= round(qc.MIN_OBJECT_PX_FULL_RES / scale ** 2))
    keep = keep[keep > 0]
    edge_ids = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    inner = sum(1 for k in keep if k not in edge_ids)
    lo, hi = np.percentile(green, [1, qc.LOW_CONTRAST["upper_percentile"]])
    low = (hi - lo) / 255.0 < qc.LOW_CONTRAST["fraction_threshold"]
    return len(keep), inner, bool(low)


def test_real_samples_match_the_independent_computation(real_samples_dir, tmp_path, capsys):
    summary = qc.qc_folder(real_samples_dir, out_dir=tmp_path / "qc", workers=1, progress=False,
                           write_filtered=tmp_path / "passing.csv", labels_csv=real_samples_dir / "labels.csv")
    table = pd.read_csv(tmp_path / "qc" / "qc.csv", dtype={"id": str})
    assert summary["n_images"] == 3 and len(table) == 3
    for row in table.itertuples():
        red = cv2.imread(str(real_samples_dir / f"{row.id}_red.png"), cv2.IMREAD_GRAYSCALE)
        green = cv2.imread(str(real_samples_dir / f"{row.id}_green.png"), cv2.IMREAD_GRAYSCALE)
        cells, inner, low = _reference(red, green, scale=2048 / red.shape[0])
        print(f"{row.id}: {row.cells} cells, {row.counted_cells} not touching the border, low contrast "
              f"{row.green_low_contrast}, passed {row.passed}")
        assert (row.cells, row.counted_cells, bool(row.green_low_contrast)) == (cells, inner, low)
    passing = pd.read_csv(tmp_path / "passing.csv", dtype=str)
    assert sorted(passing["Id"]) == sorted(table.loc[table["passed"], "id"])
    assert json.loads((tmp_path / "qc" / "qc_summary.json").read_text())["passed"] == summary["passed"]
    # and from the command line, in worker processes
    assert cli.main(["qc", str(real_samples_dir), "--out", str(tmp_path / "cli"), "--workers", "2"]) == 0
    again = pd.read_csv(tmp_path / "cli" / "qc.csv", dtype={"id": str}).sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(again, table.sort_values("id").reset_index(drop=True))
    assert "images pass" in capsys.readouterr().out
