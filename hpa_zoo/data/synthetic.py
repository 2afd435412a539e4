"""Synthetic HPA-like fields of view, written in the exact Kaggle layout.

No HPA data can be downloaded in CI, so the demo, the tests and the benchmarks run on images made here:
``train.csv`` (``Id,Target``), ``sample_submission.csv`` (``Id,Predicted``), ``train/`` and ``test/`` with
``{Id}_{red,green,blue,yellow}.png`` 8-bit grayscale files (teams.md §0.1). Numbers measured on this data
are never HPA results.

What a field of view models (all sizes are for 512 px and scale with ``size / 512``):

* cells: ellipses with a wobbly outline (2nd/3rd/5th harmonics), radius 30-60 px, 5-20 per field; where
  they overlap the pixel goes to the cell whose normalised radius is smallest, so touching cells share a
  border; an off-centre nucleus of 35-55 % of the cell radius with 1-4 nucleoli (dark in blue);
* blue: nucleus, textured, nucleoli darker; a mitotic cell shows a condensed metaphase plate instead;
* red (microtubules): radial filaments from the nucleus, a spindle in mitotic cells, the bridge between
  dividing daughter cells;
* yellow (ER): a reticular mesh (zero-crossings of band-passed noise), dense around the nucleus;
* green (protein): a faint non-specific stain plus, for every label, that class's pattern (``PATTERNS``,
  one small function each, modelled on the class's biology), with a random strength per image and a
  random subset of expressing cells, so patterns vary in strength and rare look-alike classes stay hard;
* image formation: background offset, Gaussian blur (optics), Poisson-Gaussian noise (shot noise in its
  Gaussian approximation plus read noise), 8-bit clipping. Mean intensities come out at ~5-25 of 255,
  like the real samples (8-17).

Difficulty presets (`PRESETS`, ``preset=`` / ``hpa-zoo synth --preset``): ``"hpa"`` (the default) is all of the
above; ``"demo"`` is the same generator zoomed in 2x, as in an HPA crop (cells and every pattern feature twice as
large, so ~1-4 cells per field), with stronger and more uniformly expressed patterns, a fainter non-specific
stain and a flatter class balance (Kaggle counts to the power 0.25), so that a from-scratch CNN learns it on a
CPU in minutes at a small input size. Both have four stains, the 28 class patterns, Kaggle's labels-per-image
distribution and the same noise model; both are synthetic.

Samples (``fields_per_sample=K`` / ``hpa-zoo synth --fields-per-sample K``): K fields of view of one sample
(`SampleStyle`) share its labels, pattern strengths, cell-line morphology (cell size and elongation) and a hidden
signature (background, noise gains, blur, per-stain intensity, a faint fixed-pattern artefact), as the fields of
one HPA sample do; ``train.csv`` then has a ``Sample`` column, so the same-sample leak can be measured.

Not modelled: 16-bit dynamic range, out-of-focus planes, debris, label co-occurrence structure (classes are
drawn independently apart from the number of labels per image), and the Kaggle/HPAv18 duplicates.
"""
from __future__ import annotations

import functools
import multiprocessing
import os
import shutil
import time
import uuid
from statistics import NormalDist
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import pandas as pd

from hpa_zoo.atomic import atomic_to_csv, atomic_write_text
from hpa_zoo.constants import CHANNELS, KAGGLE_TRAIN_COUNTS, NUM_CLASSES
from hpa_zoo.errors import ConfigError, DiskWriteError
from hpa_zoo.data.labels import format_target

#: Images of the Kaggle train.csv with 1, 2, 3, 4, 5 labels (community EDA counts; they sum to 31,072
#: and give mean 1.634, max 5, as in teams.md §0.1).
KAGGLE_LABELS_PER_IMAGE = np.array([15126, 12485, 3160, 299, 2], dtype=np.int64)
LABEL_COUNT_PROBS = KAGGLE_LABELS_PER_IMAGE / KAGGLE_LABELS_PER_IMAGE.sum()

#: Class sampling weights: proportional to the Kaggle train counts (teams.md §0.2), floored at 1 % of the
#: most frequent class (12,885 -> 128.85), so the five rarest classes (Peroxisomes 53, Endosomes 45,
#: Lysosomes 28, Microtubule ends 21, Rods & rings 11) occur about 2.5-12x more often than in Kaggle and
#: every class is present in a few thousand images (~8 Rods & rings per 2,000).
CLASS_FLOOR_FRACTION = 0.01
CLASS_WEIGHTS = np.maximum(KAGGLE_TRAIN_COUNTS, CLASS_FLOOR_FRACTION * KAGGLE_TRAIN_COUNTS.max()).astype(np.float64)
CLASS_WEIGHTS /= CLASS_WEIGHTS.sum()

#: Reference size: geometry constants below are in pixels at 512 (Kaggle PNG size).
REFERENCE_SIZE = 512
#: Standard-normal quantiles of 256 equiprobable bins: pixel noise from random bytes, ~10x cheaper than
#: ``rng.standard_normal`` and indistinguishable after 8-bit rounding.
_GAUSS_TABLE = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], np.float32)
_SPLIT_CODE = {"train": 1, "test": 2}


@dataclass(frozen=True)
class SyntheticPreset:
    """A difficulty setting of the generator (`PRESETS`).

    Attributes:
        name: the preset's name.
        zoom: magnification over a 512 px Kaggle field (geometry and pattern features scale with
            ``zoom * size / 512``; the number of cells per field with ``1 / zoom**2``, at least 1).
        class_weights: (28,) float64 class sampling weights (sum 1).
        strength: (low, high) of the per-image pattern strength.
        expressing: (low, high) of the fraction of cells that express the protein.
        nonspecific: (low, high) of the non-specific green stain.
        description: one line for the dataset README.
    """

    name: str
    zoom: float
    class_weights: np.ndarray
    strength: tuple[float, float]
    expressing: tuple[float, float]
    nonspecific: tuple[float, float]
    description: str


#: Demo class weights: Kaggle train counts to the power 0.25 (largest / smallest 5.9x instead of 1,171x).
DEMO_CLASS_WEIGHTS = KAGGLE_TRAIN_COUNTS.astype(np.float64) ** 0.25
DEMO_CLASS_WEIGHTS /= DEMO_CLASS_WEIGHTS.sum()

PRESETS: dict[str, SyntheticPreset] = {
    "hpa": SyntheticPreset(
        "hpa", 1.0, CLASS_WEIGHTS, (0.35, 1.0), (0.6, 1.0), (0.03, 0.1),
        "realistic difficulty: a 512 px field (5-20 cells), patterns of random strength in 60-100 % of the cells, "
        "classes proportional to the Kaggle counts (floored at 1 % of the largest)"),
    "demo": SyntheticPreset(
        "demo", 2.0, DEMO_CLASS_WEIGHTS, (0.7, 1.0), (0.9, 1.0), (0.02, 0.05),
        "learnable on a CPU in minutes: a 2x zoomed crop (1-5 larger cells, every pattern feature twice as large), "
        "strong patterns in 90-100 % of the cells, classes proportional to the Kaggle counts to the power 0.25"),
}
#: The preset used when none is named (today's realistic generator).
DEFAULT_PRESET = "hpa"


def get_preset(preset: "str | SyntheticPreset") -> SyntheticPreset:
    """The `SyntheticPreset` named ``preset`` (or ``preset`` itself); ConfigError naming the valid names."""
    if isinstance(preset, SyntheticPreset):
        return preset
    if preset not in PRESETS:
        raise ConfigError(f"unknown synthetic preset {preset!r}; use one of {', '.join(PRESETS)} "
                          f"(CLI: hpa-zoo synth --preset {'|'.join(PRESETS)})")
    return PRESETS[preset]

README_TEXT = """# Synthetic HPA-like dataset (hpa-zoo)

**This data is synthetic.** It was generated by `hpa_zoo.data.synthetic` and only mimics the *layout* and the
rough appearance of the Human Protein Atlas Image Classification data (Kaggle 2018/19). Numbers measured
on it (F1 scores, losses, speeds on it) are **never** HPA results and must not be reported as such.

- `train.csv` (`Id,Target`), `sample_submission.csv` (`Id,Predicted`), `train/`, `test/` with
  `{{Id}}_{{red,green,blue,yellow}}.png` (8-bit grayscale, {size}x{size}): the Kaggle layout.
- `test_labels.csv` (`Id,Target`, not part of Kaggle's layout): the true labels of `test/`, so that
  `hpa-zoo evaluate submission.csv test_labels.csv` can score predictions.
- {n_train} train and {n_test} test images, seed {seed}. Same seed and sizes give byte-identical files.
- Preset `{preset}`: {description}.
- Labels: 1-5 per image with Kaggle's distribution of label counts; classes drawn with the preset's weights
  (`hpa`: the Kaggle train counts with a floor of {floor:.0%} of the largest class so every class occurs).
"""


SAMPLES_README_TEXT = """- Samples: {k} fields of view per sample ({n_samples} samples). The fields of a sample share its labels, its
  pattern strengths, its cell-line morphology and a hidden signature (background, noise, stain intensity, a faint
  fixed-pattern artefact): the `Sample` column of `train.csv` and `test_labels.csv`. {n_leaky} of the {n_test}
  test images have a same-sample image in train (`SampleInTrain` = 1): a split that separates the fields of a
  sample leaks it (`hpa-zoo folds --group-by-sample` keeps them together).
"""


# ---------------------------------------------------------------------------------------------- labels
def sample_labels(n: int, rng: np.random.Generator, class_weights: np.ndarray = CLASS_WEIGHTS
                  ) -> list[tuple[int, ...]]:
    """Draw ``n`` label sets with Kaggle-like statistics.

    The number of labels (1-5) follows ``LABEL_COUNT_PROBS``; the classes are drawn without replacement
    with probabilities ``class_weights`` (default ``CLASS_WEIGHTS``: Kaggle counts with a floor, see
    ``CLASS_FLOOR_FRACTION``; a preset's ``class_weights``).

    Args:
        n: number of images.
        rng: NumPy generator (the only source of randomness).
        class_weights: (28,) float64 probabilities summing to 1.
    Returns:
        ``n`` sorted tuples of distinct class ids in ``0..27``.
    """
    counts = rng.choice(np.arange(1, len(LABEL_COUNT_PROBS) + 1), size=int(n), p=LABEL_COUNT_PROBS)
    return [tuple(sorted(int(c) for c in rng.choice(NUM_CLASSES, size=int(k), replace=False, p=class_weights)))
            for k in counts]


# ---------------------------------------------------------------------------------------------- geometry
@dataclass
class _Cells:
    """Per-cell parameters (arrays of length n): ellipse of the cell and of its nucleus, in pixels."""

    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray  # semi-axis along ``ang``
    b: np.ndarray
    ang: np.ndarray
    nx: np.ndarray
    ny: np.ndarray
    na: np.ndarray
    nb: np.ndarray
    kind: np.ndarray  # 0 interphase, 1 mitotic, 2 daughter of a division
    phi: np.ndarray  # a perinuclear direction (Golgi, centrosome, aggresome side)

    @property
    def n(self) -> int:
        return len(self.cx)


@dataclass
class _Field:
    """The rasterised geometry of one field of view; every map is (size, size)."""

    size: int
    s: float  # size / 512
    cells: _Cells
    pairs: list[tuple[int, int]]  # daughter cells joined by a cytokinetic bridge
    owner: np.ndarray  # int32, 0 background, i+1 cell i
    rho_nuc: np.ndarray  # float32, normalised radius in the owner's nucleus (<1 inside)
    theta: np.ndarray  # float32, angle around the owner's nucleus centre (image frame)
    cell: np.ndarray  # float32 0..1, soft cell mask
    nuc: np.ndarray  # float32 0..1, soft nucleus mask
    cyto: np.ndarray  # float32 0..1
    rim_dist: np.ndarray  # float32, distance (px) to the owner's outline
    junction: np.ndarray  # bool, outline pixels shared by two cells
    nucleoli: np.ndarray  # float32 0..1, nucleoli map
    nucleoli_xyr: np.ndarray  # (K, 3) float: x, y, radius of every nucleolus
    filaments: np.ndarray  # float32 0..1, radial microtubule texture (inside cells)
    er: np.ndarray  # float32 0..1, ER mesh (inside cells)
    spindle: np.ndarray  # float32 0..1, mitotic spindles

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)


def _smooth_noise(size: int, feature_px: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std smooth noise with blobs of about ``feature_px`` pixels; (size, size) float32."""
    low = int(max(2, round(size / max(feature_px, 1.0))))
    noise = rng.standard_normal((low + 2, low + 2), dtype=np.float32)
    up = cv2.resize(noise, (size + size // low * 2, size + size // low * 2), interpolation=cv2.INTER_CUBIC)
    off = size // low
    up = up[off:off + size, off:off + size]
    sub = up[::4, ::4]  # statistics on a subsample: 16x cheaper, plenty accurate
    return (up - sub.mean()) * np.float32(1 / (sub.std() + 1e-6))


def _layout(labels: Sequence[int], size: int, rng: np.random.Generator, zoom: float = 1.0,
            style: "SampleStyle | None" = None) -> tuple[_Cells, list[tuple[int, int]]]:
    """Place cells: an optional dividing pair, optional mitotic cells, then interphase cells by rejection
    (``zoom``: geometry scaled by it, the interphase cell count by ``1 / zoom**2``; ``style``: the sample's
    cell-line size and elongation of the interphase cells)."""
    s = size / REFERENCE_SIZE * zoom
    rows: list[tuple] = []  # (cx, cy, a, b, ang, kind)
    pairs: list[tuple[int, int]] = []
    # The confounder draws come first and always, so a label changes only what it forces.
    divide, mitosis, crowd = rng.random(3) < (0.1, 0.1, 0.3)
    # Dividing daughters (forced by Cytokinetic bridge, sometimes present without it as a confounder).
    if 16 in labels or divide:
        r = rng.uniform(24, 32) * s
        cx, cy = rng.uniform(0.25, 0.75, 2) * size
        d = rng.uniform(0, np.pi)
        half = r + rng.uniform(4, 9) * s
        for sign in (-1, 1):
            rows.append((cx + sign * half * np.cos(d), cy + sign * half * np.sin(d),
                         r * rng.uniform(0.95, 1.1), r * rng.uniform(0.85, 1.0), d, 2))
        pairs.append((0, 1))
    # Mitotic cells (forced by Mitotic spindle, sometimes present without it).
    n_mitotic = int(rng.integers(1, 3)) if 17 in labels else int(mitosis)
    for _ in range(n_mitotic):
        r = rng.uniform(28, 38) * s
        rows.append((*rng.uniform(0.15, 0.85, 2) * size, r, r * rng.uniform(0.9, 1.0), rng.uniform(0, np.pi), 1))
    dense = 22 in labels or crowd
    target = int(rng.integers(12, 21) if dense else rng.integers(5, 15))
    if zoom != 1.0:  # the same draw, scaled to the zoomed field's area
        target = max(len(rows) + 1, int(round(target / zoom ** 2)))
    overlap = 0.72 if dense else 0.9
    attempts = 0
    while len(rows) < target and attempts < 40 * target:
        attempts += 1
        r = rng.uniform(34, 64) * s
        if style is not None:  # the cell line's size
            r = r * style.cell_scale
        cx, cy = rng.uniform(-0.05, 1.05, 2) * size
        ok = all(np.hypot(cx - q[0], cy - q[1]) > overlap * (r + q[2]) * (1.5 if q[5] else 1.0) for q in rows)
        if ok:
            a_, b_ = r * rng.uniform(1.0, 1.35), r * rng.uniform(0.7, 1.0)
            if style is not None:  # the cell line's elongation
                a_, b_ = a_ * style.cell_aspect, b_ / style.cell_aspect
            rows.append((cx, cy, a_, b_, rng.uniform(0, np.pi), 0))
    cx, cy, a, b, ang, kind = (np.array(col, dtype=np.float64) for col in zip(*rows))
    kind = kind.astype(np.int32)
    n = len(cx)
    # Nucleus: off-centre for interphase cells, a thin metaphase plate (along the minor axis) when mitotic.
    frac = rng.uniform(0.38, 0.55, n)
    off = rng.uniform(0, 0.18, n) * a
    off_dir = rng.uniform(0, 2 * np.pi, n)
    mitotic = kind == 1
    off[mitotic | (kind == 2)] = 0.0
    na = np.where(mitotic, 0.13 * a, frac * a * rng.uniform(0.85, 1.0, n))
    nb = np.where(mitotic, 0.62 * b, frac * b * rng.uniform(0.95, 1.15, n))
    cells = _Cells(cx=cx, cy=cy, a=a, b=b, ang=ang, nx=cx + off * np.cos(off_dir), ny=cy + off * np.sin(off_dir),
                   na=na, nb=nb, kind=kind, phi=rng.uniform(-np.pi, np.pi, n))
    return cells, pairs


_WOBBLE_BINS = 256


def _wobble_table(rng: np.random.Generator, amount: float) -> np.ndarray:
    """Outline radius factor 1 + 2nd, 3rd and 5th harmonics, tabulated over ``_WOBBLE_BINS`` angles; float32."""
    t = np.linspace(0, 2 * np.pi, _WOBBLE_BINS)
    table = np.ones_like(t)
    for k in (2, 3, 5):
        table += rng.uniform(0, amount) / k * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    return table.astype(np.float32)


def _ellipse_radius(dx: np.ndarray, dy: np.ndarray, ang: float, a: float, b: float,
                    wobble: np.ndarray | None) -> np.ndarray:
    """Normalised radius (1 on the outline) of a rotated, wobbly ellipse at offsets dx (1, w), dy (h, 1)."""
    c, s = np.float32(np.cos(ang)), np.float32(np.sin(ang))
    u, v = (dx * c + dy * s) * np.float32(1 / a), (dy * c - dx * s) * np.float32(1 / b)
    rho = np.sqrt(u * u + v * v)
    if wobble is not None:  # index the table by a pseudo-angle in [0, 4) (monotonic in the angle, no arctan2)
        pseudo = np.float32(1) - u / (np.abs(u) + np.abs(v) + np.float32(1e-12))
        pseudo = np.where(v < 0, np.float32(4) - pseudo, pseudo)
        rho /= wobble[(pseudo * np.float32((_WOBBLE_BINS - 1) / 4)).astype(np.int32)]
    return rho


def _spindle(dx: np.ndarray, dy: np.ndarray, ang: float, a: float, b: float) -> np.ndarray:
    """A mitotic spindle: a lemon from pole to pole along ``ang``, fibres converging on the poles; float32 0..1."""
    c, s = np.float32(np.cos(ang)), np.float32(np.sin(ang))
    u, v = dx * c + dy * s, dy * c - dx * s
    length = np.float32(0.85 * a)
    width = np.float32(0.55 * b) * np.clip(1 - (u / length) ** 2, 0, None) + np.float32(1e-3)
    fibres = 0.5 + 0.5 * np.cos(np.float32(7 * np.pi) * v / width)
    return np.exp(-2.5 * (v / width) ** 2) * (np.abs(u) < length) * fibres


def _rasterise(cells: _Cells, pairs: list[tuple[int, int]], size: int, rng: np.random.Generator,
               zoom: float = 1.0) -> _Field:
    """Turn cell parameters into the per-pixel maps of a ``_Field`` (each cell works in its bounding box)."""
    s = size / REFERENCE_SIZE * zoom
    owner = np.zeros((size, size), np.int32)
    best = np.ones((size, size), np.float32)  # only normalised radii < 1 claim a pixel
    rho_nuc = np.full((size, size), 9.0, np.float32)
    spindle = np.zeros((size, size), np.float32)
    grid = np.arange(size, dtype=np.float32)
    for i in range(cells.n):
        cx, cy, a, b, ang = (float(x) for x in (cells.cx[i], cells.cy[i], cells.a[i], cells.b[i], cells.ang[i]))
        wobble = _wobble_table(rng, 0.08 if cells.kind[i] else 0.35)
        reach = float(wobble.max()) * max(a, b) + 1
        x0, x1 = int(max(0, cx - reach)), int(min(size, cx + reach + 1))
        y0, y1 = int(max(0, cy - reach)), int(min(size, cy + reach + 1))
        if x1 <= x0 or y1 <= y0:
            continue
        xs, ys = grid[None, x0:x1], grid[y0:y1, None]
        win = np.s_[y0:y1, x0:x1]
        claim = _ellipse_radius(xs - np.float32(cx), ys - np.float32(cy), ang, a, b, wobble)
        claim_mask = claim < best[win]
        if not claim_mask.any():
            continue
        dxn, dyn = xs - np.float32(cells.nx[i]), ys - np.float32(cells.ny[i])
        nuc_wobble = None if cells.kind[i] == 1 else _wobble_table(rng, 0.15)
        np.copyto(rho_nuc[win], _ellipse_radius(dxn, dyn, ang, float(cells.na[i]), float(cells.nb[i]), nuc_wobble),
                  where=claim_mask)
        if cells.kind[i] == 1:
            np.copyto(spindle[win], _spindle(xs - np.float32(cx), ys - np.float32(cy), ang, a, b), where=claim_mask)
        np.copyto(best[win], claim, where=claim_mask)
        np.copyto(owner[win], i + 1, where=claim_mask)
    # Angle of every cell pixel around its own nucleus centre (image frame).
    nx = np.concatenate([[0.0], cells.nx]).astype(np.float32)
    ny = np.concatenate([[0.0], cells.ny]).astype(np.float32)
    theta = np.arctan2(grid[:, None] - ny[owner], grid[None, :] - nx[owner])
    inside = owner > 0
    # Outline: a cell pixel with a 4-neighbour of another owner (or background); junction: both are cells.
    outline = np.zeros_like(inside)
    junction = np.zeros_like(inside)
    for a_sl, b_sl in (((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                       ((slice(1, None), slice(None)), (slice(None, -1), slice(None)))):
        differ = owner[a_sl] != owner[b_sl]
        both = differ & (owner[a_sl] > 0) & (owner[b_sl] > 0)
        outline[a_sl] |= differ
        outline[b_sl] |= differ
        junction[a_sl] |= both
        junction[b_sl] |= both
    outline &= inside
    rim_dist = cv2.distanceTransform((inside & ~outline).astype(np.uint8), cv2.DIST_L2, 3)
    cell = np.clip(rim_dist / max(1.5 * s, 0.75), 0, 1).astype(np.float32)
    nuc = (cell / (1 + np.exp(np.minimum((rho_nuc - 1) / 0.05, 30)))).astype(np.float32)
    # Nucleoli: 1-3 per interphase nucleus, within 55 % of its radius.
    canvas = np.zeros((size, size), np.uint8)
    xyr = []
    for i in np.flatnonzero(cells.kind != 1):
        rad = np.sqrt(cells.na[i] * cells.nb[i])
        for _ in range(int(rng.integers(1, 4))):
            d, t = rng.uniform(0, 0.55) * rad, rng.uniform(0, 2 * np.pi)
            x, y, r = cells.nx[i] + d * np.cos(t), cells.ny[i] + d * np.sin(t), rng.uniform(0.14, 0.26) * rad
            xyr.append((x, y, r))
            cv2.circle(canvas, (int(x * 16), int(y * 16)), max(int(r * 16), 16), 255, -1, cv2.LINE_AA, shift=4)
    nucleoli = cv2.GaussianBlur(canvas.astype(np.float32) / 255, (0, 0), max(1.2 * s, 0.5)) * nuc
    # Microtubules: radial filaments around the nucleus (an integer count, so no seam at +-pi), bent by noise.
    n_fil = int(rng.integers(35, 70))
    wave = np.cos(n_fil * theta + 2.5 * _smooth_noise(size, 40 * s, rng) + 0.8 * _smooth_noise(size, 10 * s, rng)
                  + 0.8 * rho_nuc)
    wave = 0.5 + 0.5 * wave
    wave *= wave * wave
    filaments = (wave * wave * (0.5 + 0.5 * np.clip(_smooth_noise(size, 6 * s, rng), -1, 1)) * cell
                 * (1 - 0.7 * nuc)).astype(np.float32)
    # ER: zero crossings of band-passed noise form a mesh; denser near the nucleus, plus the envelope.
    mesh = np.exp(-(_smooth_noise(size, 7 * s, rng) / 0.45) ** 2)
    perinuclear = np.where(rho_nuc > 1, 0.25 + 0.75 * np.exp(-(rho_nuc - 1) / 0.6), 0.1)
    envelope = 0.5 * np.exp(-((rho_nuc - 1) / 0.08) ** 2)
    er = (np.clip(mesh * perinuclear + envelope, 0, 1) * cell).astype(np.float32)
    return _Field(size=size, s=s, cells=cells, pairs=pairs, owner=owner, rho_nuc=rho_nuc, theta=theta, cell=cell,
                  nuc=nuc, cyto=np.clip(cell - nuc, 0, 1), rim_dist=rim_dist, junction=junction, nucleoli=nucleoli,
                  nucleoli_xyr=np.array(xyr, np.float64).reshape(-1, 3), filaments=filaments, er=er, spindle=spindle)


# ---------------------------------------------------------------------------------------------- drawing helpers
def _sample_points(weight: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pixel positions drawn with probability proportional to ``weight`` (H, W) >= 0: (ys, xs) int arrays."""
    flat = weight.ravel()
    idx = np.flatnonzero(flat > 1e-3)
    if idx.size == 0 or n <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cdf = np.cumsum(flat[idx], dtype=np.float64)
    pick = idx[np.minimum(np.searchsorted(cdf, rng.random(int(n)) * cdf[-1]), idx.size - 1)]
    return np.divmod(pick, weight.shape[1])


def _dots(f: _Field, weight: np.ndarray, per_cell: float, sigma_px: float, rng: np.random.Generator,
          amp: tuple[float, float] = (0.5, 1.0)) -> np.ndarray:
    """Gaussian dots (peak ``amp``) at ``per_cell``·n_cells points drawn from ``weight``; (H, W) float32."""
    ys, xs = _sample_points(weight, rng.poisson(per_cell * f.cells.n), rng)
    canvas = np.zeros(f.shape, np.float32)
    np.add.at(canvas, (ys, xs), rng.uniform(*amp, len(ys)).astype(np.float32))
    sigma = max(sigma_px * f.s, 0.5)
    return cv2.GaussianBlur(canvas, (0, 0), sigma) * np.float32(2 * np.pi * sigma ** 2)


def _polylines(f: _Field, lines: list[np.ndarray], thickness_px: float) -> np.ndarray:
    """Anti-aliased polylines (each (k, 2) x, y float pixels) drawn at value 1; (H, W) float32."""
    canvas = np.zeros(f.shape, np.uint8)
    if lines:
        pts = [np.round(p * 16).astype(np.int32).reshape(-1, 1, 2) for p in lines]
        cv2.polylines(canvas, pts, False, 255, max(1, int(round(thickness_px * f.s))), cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255


def _segments(f: _Field, weight: np.ndarray, per_cell: float, length_px: tuple[float, float],
              rng: np.random.Generator, radial: bool = False) -> list[np.ndarray]:
    """Short straight segments centred on points drawn from ``weight``; radial ones point away from the nucleus."""
    ys, xs = _sample_points(weight, rng.poisson(per_cell * f.cells.n), rng)
    direction = f.theta[ys, xs] if radial else rng.uniform(0, np.pi, len(ys))
    half = rng.uniform(*length_px, len(ys)) * f.s / 2
    d = np.stack([np.cos(direction), np.sin(direction)], 1) * half[:, None]
    centre = np.stack([xs, ys], 1).astype(np.float64)
    return [np.stack([c - e, c + e]) for c, e in zip(centre, d)]


def _near_nucleus(f: _Field, i: int, dist: float, angle: float) -> tuple[float, float]:
    """The point at ``dist`` nuclear radii from cell ``i``'s nucleus centre in direction ``angle``: (x, y)."""
    c = f.cells
    r = np.sqrt(c.na[i] * c.nb[i]) * dist
    return c.nx[i] + r * np.cos(angle), c.ny[i] + r * np.sin(angle)


def _interphase(f: _Field) -> np.ndarray:
    """Indices of interphase cells (those whose nucleus has perinuclear neighbours such as the Golgi)."""
    return np.flatnonzero(f.cells.kind != 1)


# ---------------------------------------------------------------------------------------------- class patterns
# Each pattern: (field, rng) -> (H, W) float32, peak about 1, not yet gated by the per-cell expression.
def _nucleoplasm(f, rng):
    """Diffuse nuclear stain sparing the nucleoli."""
    return f.nuc * (0.75 + 0.25 * np.clip(_smooth_noise(f.size, 5 * f.s, rng), -1, 1)) * (1 - 0.8 * f.nucleoli)


def _nuclear_membrane(f, rng):
    """A thin ring on the nuclear rim."""
    return np.exp(-((f.rho_nuc - 1) / 0.07) ** 2) * f.cell


def _nucleoli(f, rng):
    """The nucleoli: a few bright blobs in the nucleus."""
    return np.clip(1.4 * f.nucleoli, 0, 1) * (0.8 + 0.2 * np.clip(_smooth_noise(f.size, 3 * f.s, rng), -1, 1))


def _nucleoli_fibrillar_center(f, rng):
    """Tiny dots (2-6) inside every nucleolus."""
    canvas = np.zeros(f.shape, np.float32)
    for x, y, r in f.nucleoli_xyr:
        k = int(rng.integers(2, 7))
        px = np.clip(np.round(x + rng.uniform(-0.6, 0.6, k) * r), 0, f.size - 1).astype(int)
        py = np.clip(np.round(y + rng.uniform(-0.6, 0.6, k) * r), 0, f.size - 1).astype(int)
        np.add.at(canvas, (py, px), rng.uniform(0.8, 1.0, k).astype(np.float32))
    sigma = max(1.0 * f.s, 0.5)
    return np.clip(cv2.GaussianBlur(canvas, (0, 0), sigma) * np.float32(3 * np.pi * sigma ** 2), 0, 1.2)


def _nuclear_speckles(f, rng):
    """Many (20-40) irregular small dots in the nucleoplasm, over a faint diffuse nuclear stain."""
    where = f.nuc * (1 - f.nucleoli)
    return _dots(f, where, rng.uniform(20, 40), 1.6, rng) + 0.15 * where


def _nuclear_bodies(f, rng):
    """Few (2-6) bright small dots in the nucleus."""
    return _dots(f, f.nuc * (1 - f.nucleoli), rng.uniform(2, 6), 1.8, rng, amp=(0.8, 1.0))


def _endoplasmic_reticulum(f, rng):
    """The ER mesh, co-localised with the yellow channel."""
    return f.er


def _golgi(f, rng):
    """A compact perinuclear cluster on one side of the nucleus (a punctate crescent)."""
    side = f.cells.phi[np.maximum(f.owner - 1, 0)]
    d = np.angle(np.exp(1j * (f.theta - side)))
    crescent = np.exp(-(d / 0.55) ** 2 - ((f.rho_nuc - 1.3) / 0.22) ** 2) * f.cyto
    return crescent * (0.4 + 0.6 * np.clip(_smooth_noise(f.size, 2.5 * f.s, rng) + 0.5, 0, 1.5))


def _perinuclear_cyto(f, decay):
    """Cytoplasm weight that decays with the distance from the nucleus (``decay`` in nuclear radii)."""
    return f.cyto * np.exp(-np.clip(f.rho_nuc - 1, 0, None) / decay)


def _peroxisomes(f, rng):
    """Many (30-60) tiny dim dots spread through the cytoplasm."""
    return _dots(f, f.cyto, rng.uniform(30, 60), 0.9, rng, amp=(0.35, 0.7))


def _endosomes(f, rng):
    """Medium dots (15-30), mildly perinuclear."""
    return _dots(f, _perinuclear_cyto(f, 1.2), rng.uniform(15, 30), 1.4, rng, amp=(0.5, 0.9))


def _lysosomes(f, rng):
    """Fewer (8-18), larger bright dots, clustered around the nucleus."""
    return _dots(f, _perinuclear_cyto(f, 0.5), rng.uniform(8, 18), 2.0, rng, amp=(0.7, 1.0))


def _intermediate_filaments(f, rng):
    """Long wavy filaments winding through the cytoplasm around the nucleus."""
    lines = []
    for i in _interphase(f):
        radius = np.sqrt(f.cells.a[i] * f.cells.b[i])
        for _ in range(int(rng.integers(6, 12))):
            start = np.array(_near_nucleus(f, i, rng.uniform(1.1, 1.6), rng.uniform(-np.pi, np.pi)))
            heading = rng.uniform(-np.pi, np.pi) + np.cumsum(rng.normal(0, 0.25, 14))
            step = radius / 10
            lines.append(start + np.cumsum(np.stack([np.cos(heading), np.sin(heading)], 1) * step, 0))
    return _polylines(f, lines, 1.2) * f.cyto


def _actin_filaments(f, rng):
    """Straight parallel stress fibres spanning each cell (chords of its ellipse)."""
    lines = []
    c = f.cells
    for i in _interphase(f):
        tilt = c.ang[i] + rng.normal(0, 0.25)
        cos_t, sin_t = np.cos(tilt), np.sin(tilt)
        for off in rng.uniform(-0.8, 0.8, int(rng.integers(5, 12))) * c.b[i]:
            half = 0.9 * c.a[i] * np.sqrt(max(1 - (off / c.b[i]) ** 2, 0.05))
            centre = np.array([c.cx[i] - off * sin_t, c.cy[i] + off * cos_t])
            lines.append(np.stack([centre - half * np.array([cos_t, sin_t]), centre + half * np.array([cos_t, sin_t])]))
    return _polylines(f, lines, 1.2) * f.cell * rng.uniform(0.6, 1.0)


def _focal_adhesion(f, rng):
    """Short radial dashes at the cell periphery."""
    rim = ((f.rim_dist > 1.5 * f.s) & (f.rim_dist < 7 * f.s) & (f.owner > 0)).astype(np.float32)
    return _polylines(f, _segments(f, rim, rng.uniform(8, 18), (4, 9), rng, radial=True), 1.6) * f.cell


def _microtubules(f, rng):
    """The radial microtubule network, co-localised with the red channel."""
    return np.clip(1.5 * f.filaments, 0, 1)


def _microtubule_ends(f, rng):
    """Small dots at the tips of microtubules (near the cell periphery, on filaments)."""
    tips = f.filaments * ((f.rim_dist > 1 * f.s) & (f.rim_dist < 8 * f.s))
    return _dots(f, tips, rng.uniform(15, 30), 1.0, rng, amp=(0.9, 1.3))


def _cytokinetic_bridge(f, rng):
    """A bright line across the gap between two daughter cells, brightest at the midbody."""
    lines, mids = [], []
    c = f.cells
    for i, j in f.pairs:
        p, q = np.array([c.cx[i], c.cy[i]]), np.array([c.cx[j], c.cy[j]])
        lines.append(np.stack([p + 0.55 * (q - p), q + 0.55 * (p - q)]))
        mids.append((p + q) / 2)
    out = _polylines(f, lines, 2.0)
    for x, y in mids:
        out[int(np.clip(y, 0, f.size - 1)), int(np.clip(x, 0, f.size - 1))] += 3.0
    return np.clip(cv2.GaussianBlur(out, (0, 0), max(0.8 * f.s, 0.5)) * 1.5, 0, 1)


def _mitotic_spindle(f, rng):
    """The spindle of a rounded mitotic cell (also faint diffuse stain in its cytoplasm)."""
    mitotic = np.isin(f.owner, np.flatnonzero(f.cells.kind == 1) + 1)
    return f.spindle + 0.15 * f.cyto * mitotic


def _centre_dots(f, rng, dist, sigma_px, halo):
    """One or two dots beside each nucleus (``dist`` nuclear radii out), with an optional halo."""
    canvas = np.zeros(f.shape, np.float32)
    for i in _interphase(f):
        for k in range(int(rng.integers(1, 3))):
            x, y = _near_nucleus(f, i, dist + 0.08 * k, f.cells.phi[i] + 0.15 * k)
            if 0 <= x < f.size and 0 <= y < f.size:
                canvas[int(y), int(x)] += 1.0
    sigma = max(sigma_px * f.s, 0.5)
    dots = cv2.GaussianBlur(canvas, (0, 0), sigma) * np.float32(2 * np.pi * sigma ** 2)
    if halo:
        big = max(6 * f.s, 1.0)
        dots += halo * cv2.GaussianBlur(canvas, (0, 0), big) * np.float32(2 * np.pi * big ** 2)
    return np.clip(dots, 0, 1) * f.cell


def _mtoc(f, rng):
    """A dot beside the nucleus inside a diffuse aster-like halo."""
    return _centre_dots(f, rng, 1.2, 1.6, halo=0.35)


def _centrosome(f, rng):
    """One or two tight bright dots beside the nucleus."""
    return _centre_dots(f, rng, 1.15, 1.0, halo=0.0)


def _lipid_droplets(f, rng):
    """Round droplets in the cytoplasm: bright rings and some filled discs."""
    ys, xs = _sample_points(f.cyto, rng.poisson(rng.uniform(3, 8) * f.cells.n), rng)
    canvas = np.zeros(f.shape, np.uint8)
    for x, y in zip(xs, ys):
        r = rng.uniform(2, 5) * f.s
        filled = rng.random() < 0.3
        cv2.circle(canvas, (int(x * 16), int(y * 16)), max(int(r * 16), 16), 255,
                   -1 if filled else max(1, int(round(1.2 * f.s))), cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255 * f.cell


def _plasma_membrane(f, rng):
    """The cell outline."""
    return np.exp(-(f.rim_dist / max(1.5 * f.s, 0.7)) ** 2) * (f.owner > 0)


def _cell_junctions(f, rng):
    """Bright segments where two cells touch (little signal on free edges)."""
    sigma = max(1.2 * f.s, 0.5)
    j = cv2.GaussianBlur(f.junction.astype(np.float32), (0, 0), sigma) * np.float32(2.5 * sigma)
    return np.clip(j, 0, 1) + 0.1 * _plasma_membrane(f, rng)


def _mitochondria(f, rng):
    """Many short tubules in the cytoplasm, denser around the nucleus."""
    return _polylines(f, _segments(f, _perinuclear_cyto(f, 1.0), rng.uniform(40, 80), (4, 10), rng), 1.4) * f.cyto


def _aggresome(f, rng):
    """One large bright blob beside the nucleus, in some of the cells."""
    canvas = np.zeros(f.shape, np.float32)
    for i in _interphase(f):
        if rng.random() < 0.7:
            x, y = _near_nucleus(f, i, 1.15, f.cells.phi[i])
            if 0 <= x < f.size and 0 <= y < f.size:
                canvas[int(y), int(x)] = 1.0
    sigma = max(5.5 * f.s, 0.8)
    return np.clip(cv2.GaussianBlur(canvas, (0, 0), sigma) * np.float32(2 * np.pi * sigma ** 2), 0, 1) * f.cell


def _cytosol(f, rng):
    """Diffuse cytoplasm (nucleus mostly spared)."""
    return (f.cyto + 0.12 * f.nuc) * (0.8 + 0.2 * np.clip(_smooth_noise(f.size, 10 * f.s, rng), -1, 1))


def _cytoplasmic_bodies(f, rng):
    """Few (1-3 per cell) medium-size bright dots in the cytoplasm."""
    return _dots(f, f.cyto, rng.uniform(1, 3), 2.6, rng, amp=(0.8, 1.0))


def _rods_and_rings(f, rng):
    """Rods (short thick bars) and rings in the cytoplasm, 1-3 per cell."""
    ys, xs = _sample_points(f.cyto, rng.poisson(rng.uniform(1, 3) * f.cells.n), rng)
    canvas = np.zeros(f.shape, np.uint8)
    thick = max(1, int(round(1.5 * f.s)))
    for x, y in zip(xs, ys):
        if rng.random() < 0.5:
            t, half = rng.uniform(0, np.pi), rng.uniform(3, 6) * f.s
            p = np.array([[x - half * np.cos(t), y - half * np.sin(t)], [x + half * np.cos(t), y + half * np.sin(t)]])
            cv2.polylines(canvas, [np.round(p * 16).astype(np.int32).reshape(-1, 1, 2)], False, 255, thick,
                          cv2.LINE_AA, shift=4)
        else:
            cv2.circle(canvas, (int(x * 16), int(y * 16)), max(int(rng.uniform(3, 5) * f.s * 16), 16), 255, thick,
                       cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255 * f.cell


#: The green pattern of every class, indexed by class id (``hpa_zoo.constants.CLASS_NAMES``), and whether the
#: per-cell expression gates it (the bridge lies between cells, so it is not gated).
PATTERNS: tuple[tuple[Callable[[_Field, np.random.Generator], np.ndarray], bool], ...] = (
    (_nucleoplasm, True), (_nuclear_membrane, True), (_nucleoli, True), (_nucleoli_fibrillar_center, True),
    (_nuclear_speckles, True), (_nuclear_bodies, True), (_endoplasmic_reticulum, True), (_golgi, True),
    (_peroxisomes, True), (_endosomes, True), (_lysosomes, True), (_intermediate_filaments, True),
    (_actin_filaments, True), (_focal_adhesion, True), (_microtubules, True), (_microtubule_ends, True),
    (_cytokinetic_bridge, False), (_mitotic_spindle, True), (_mtoc, True), (_centrosome, True),
    (_lipid_droplets, True), (_plasma_membrane, True), (_cell_junctions, True), (_mitochondria, True),
    (_aggresome, True), (_cytosol, True), (_cytoplasmic_bodies, True), (_rods_and_rings, True),
)
assert len(PATTERNS) == NUM_CLASSES


# ---------------------------------------------------------------------------------------------- channels
def _per_cell(f: _Field, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """A random level per cell, looked up per pixel (0 on background); (H, W) float32."""
    levels = np.concatenate([[0.0], rng.uniform(low, high, f.cells.n)]).astype(np.float32)
    return levels[f.owner]


def _green(f: _Field, labels: Sequence[int], rng: np.random.Generator, preset: SyntheticPreset,
           style: "SampleStyle | None" = None, signals: dict | None = None) -> np.ndarray:
    """The protein channel before image formation: non-specific stain + every label's pattern; float32.
    With a ``style`` the pattern strengths and the expressing fraction are the sample's (the draws still happen,
    so the other streams do not move). ``signals``: when a dict, each label's own (H, W) float32 signal is stored
    under its class id (same draws from ``rng`` either way, so the image does not change)."""
    gain = np.float32(rng.uniform(90, 200))
    green = rng.uniform(*preset.nonspecific) * f.cell * (0.7 + 0.3 * np.clip(_smooth_noise(f.size, 12 * f.s, rng),
                                                                             -1, 1))
    for c in labels:
        pattern, gated = PATTERNS[c]
        signal = pattern(f, rng)  # (the draws keep their original order: pattern, strength, cells, fraction)
        strength = rng.uniform(*preset.strength)
        if style is not None:  # the sample's strength of this pattern
            strength = style.strengths[style.labels.index(c)]
        signal = signal * np.float32(strength)
        if gated:  # a random 60-100 % (hpa) of the cells express the protein, each at its own level
            draws = rng.random(f.cells.n)
            fraction = rng.uniform(*preset.expressing)
            if style is not None:
                fraction = style.expressing
            expressing = draws < fraction
            expressing[rng.integers(f.cells.n)] = True
            levels = np.concatenate([[0.0], rng.uniform(0.5, 1.0, f.cells.n) * expressing]).astype(np.float32)
            signal = signal * levels[f.owner]
        if signals is not None:
            signals[c] = signal
        green += signal
    return green * gain


def _form_image(x: np.ndarray, f: _Field, rng: np.random.Generator, style: "SampleStyle | None" = None,
                channel: int = 0) -> np.ndarray:
    """Optics and camera: background offset, Gaussian blur, Poisson-Gaussian noise, 8-bit; (H, W) uint8.

    With a ``style`` (a sample's hidden signature) the stain intensity is scaled by the sample's gain of
    ``channel``, the background, blur and noise gains are the sample's, and its fixed-pattern artefact is added.
    """
    if style is None:  # the draws in their original order (same seed -> the same bytes as before samples)
        x = x.astype(np.float32) + np.float32(rng.uniform(0.3, 2.5))
        x = cv2.GaussianBlur(x, (0, 0), max(rng.uniform(0.6, 1.1) * f.s, 0.4))
        noise = _GAUSS_TABLE[np.frombuffer(rng.bytes(x.size), np.uint8)].reshape(x.shape)
        x += noise * np.sqrt(np.maximum(x, 0) * np.float32(rng.uniform(0.4, 1.2)) + np.float32(rng.uniform(0.5, 2.0)))
    else:
        x = x.astype(np.float32) * np.float32(style.stain_gain[channel]) + np.float32(style.background[channel])
        x += style.artefact(f.size) * np.float32(style.artefact_amplitude)
        x = cv2.GaussianBlur(x, (0, 0), max(style.blur * f.s, 0.4))
        noise = _GAUSS_TABLE[np.frombuffer(rng.bytes(x.size), np.uint8)].reshape(x.shape)
        x += noise * np.sqrt(np.maximum(x, 0) * np.float32(style.shot_gain) + np.float32(style.read_noise))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


#: A pixel belongs to a class's ground-truth mask where that class's own signal reaches this fraction of its peak.
MASK_FRACTION = 0.2


def synthesize_field(labels: Sequence[int], *, size: int = REFERENCE_SIZE, rng: np.random.Generator,
                     preset: "str | SyntheticPreset" = DEFAULT_PRESET, return_masks: bool = False,
                     style: "SampleStyle | None" = None):
    """Render one synthetic field of view whose green channel shows the patterns of ``labels``.

    Args:
        labels: class ids in ``0..27`` (any order, duplicates ignored); may be empty (no specific stain).
        size: height = width in pixels (>= 32); geometry scales with ``size / 512`` (times the preset's zoom).
        rng: NumPy generator, the only source of randomness (same state -> identical array).
        preset: a `PRESETS` name or a `SyntheticPreset` (default ``"hpa"``).
        return_masks: also return each label's ground-truth mask (the image is the same either way).
        style: the `SampleStyle` of the sample this field belongs to (`make_sample_style`): its pattern strengths,
            cell-line morphology and hidden signature; None (default) = an independent field, exactly as before
            samples existed. ``labels`` must then be ``style.labels``.
    Returns:
        (size, size, 4) uint8 image, channels R, G, B, Y (``hpa_zoo.constants.CHANNELS``). With ``return_masks``
        the pair (image, masks): masks maps each class id of ``labels`` to a (size, size) bool array, True where
        that class's own pattern signal (before blur and noise) is >= `MASK_FRACTION` of its maximum (all False
        when the pattern is empty, e.g. no expressing cell lies in the field).
    Raises:
        ConfigError: size below 32, a class id outside ``0..27``, an unknown preset, or labels that are not the
            style's.
    """
    preset = get_preset(preset)
    if int(size) < 32:
        raise ConfigError(f"synthetic image size {size} is too small; use size >= 32 (Kaggle PNGs are 512)")
    labels = sorted(set(int(c) for c in labels))
    bad = [c for c in labels if not 0 <= c < NUM_CLASSES]
    if bad:
        raise ConfigError(f"class id(s) {bad} outside 0..{NUM_CLASSES - 1}; see hpa_zoo.constants.CLASS_NAMES")
    size = int(size)
    if style is not None and tuple(labels) != tuple(style.labels):
        raise ConfigError(f"labels {labels} are not the sample's {list(style.labels)}: the fields of a sample share "
                          f"its labels (pass style.labels)")
    # Independent streams: the labels change the green channel only, never the cells, stains or camera noise.
    geometry_rng, stain_rng, green_rng, camera_rng = rng.spawn(4)
    cells, pairs = _layout(labels, size, geometry_rng, preset.zoom, style)
    f = _rasterise(cells, pairs, size, geometry_rng, preset.zoom)
    rng = stain_rng
    bridge = _polylines(f, [np.stack([[cells.cx[i], cells.cy[i]], [cells.cx[j], cells.cy[j]]]) for i, j in pairs], 1.5)
    blue = _per_cell(f, rng, 90, 210) * f.nuc * (0.8 + 0.2 * np.clip(_smooth_noise(size, 6 * f.s, rng), -1, 1.5)) \
        * (1 - 0.55 * f.nucleoli) * (1 + 0.4 * (cells.kind[np.maximum(f.owner - 1, 0)] == 1))
    red = rng.uniform(45, 120) * (_per_cell(f, rng, 0.6, 1.0) * (0.15 * f.cell + 0.85 * f.filaments)
                                  + 1.2 * f.spindle + 0.6 * bridge)
    yellow = rng.uniform(45, 130) * _per_cell(f, rng, 0.6, 1.0) * (0.1 * f.cell + 0.9 * f.er)
    signals: dict | None = {} if return_masks else None
    green = _green(f, labels, green_rng, preset, style, signals)
    image = np.stack([_form_image(ch, f, camera_rng, style, k) for k, ch in enumerate((red, green, blue, yellow))],
                     axis=-1)
    if not return_masks:
        return image
    masks = {}
    for c, sig in signals.items():
        sig = np.asarray(sig, np.float32)
        peak = float(sig.max()) if sig.size else 0.0
        masks[c] = sig >= MASK_FRACTION * peak if peak > 0 else np.zeros(sig.shape, bool)
    return image, masks


# ---------------------------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class SampleStyle:
    """What the fields of view of one sample (one antibody in one cell line) share (`make_sample_style`).

    The labels and the pattern strengths (the protein), the cell line's morphology, and a hidden signature of
    the preparation and the microscope session: the background level, the noise texture (shot and read noise
    gains, the optics' blur), the stain intensity of every channel and a faint fixed-pattern artefact. Each field
    still has its own cells, expressing cells and noise. The signature is what leaks a sample across a split.

    Attributes:
        sample: the sample's index.
        labels: sorted class ids of the sample.
        strengths: pattern strength of each label (same order), in the preset's ``strength`` range.
        expressing: fraction of the cells that express the protein.
        cell_scale, cell_aspect: interphase cell size and elongation factors (the cell line).
        background: (4,) background offset per channel R, G, B, Y (grey levels).
        stain_gain: (4,) stain intensity factor per channel.
        blur: the optics' Gaussian sigma at 512 px.
        shot_gain, read_noise: the camera's noise model (variance = shot_gain * signal + read_noise).
        artefact_seed, artefact_amplitude: the fixed-pattern artefact (`sample_artefact`) and its peak size in
            grey levels.
    """

    sample: int
    labels: tuple[int, ...]
    strengths: tuple[float, ...]
    expressing: float
    cell_scale: float
    cell_aspect: float
    background: tuple[float, float, float, float]
    stain_gain: tuple[float, float, float, float]
    blur: float
    shot_gain: float
    read_noise: float
    artefact_seed: int
    artefact_amplitude: float

    def artefact(self, size: int) -> np.ndarray:
        """The sample's fixed-pattern artefact at ``size``: (size, size) float32 in [-1, 1] (`sample_artefact`)."""
        return sample_artefact(self.artefact_seed, int(size))


@functools.lru_cache(maxsize=64)
def sample_artefact(seed: int, size: int) -> np.ndarray:
    """A fixed-pattern artefact (uneven illumination plus faint camera stripes) of one sample, the same in every
    field of it: (size, size) float32 in [-1, 1], read-only; a function of ``seed`` and ``size`` only."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 4]))
    shading = _smooth_noise(size, size / 3, rng)
    period, phase, angle = rng.uniform(6, 14) * size / REFERENCE_SIZE * 4, rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    stripes = np.cos((xx * np.cos(angle) + yy * np.sin(angle)) * np.float32(2 * np.pi / max(period, 2.0)) + phase)
    pattern = 0.6 * shading / max(float(np.abs(shading).max()), 1e-6) + 0.4 * stripes
    pattern = (pattern / max(float(np.abs(pattern).max()), 1e-6)).astype(np.float32)
    pattern.setflags(write=False)
    return pattern


def make_sample_style(sample: int, labels: Sequence[int], rng: np.random.Generator,
                      preset: "str | SyntheticPreset" = DEFAULT_PRESET) -> SampleStyle:
    """Draw the shared traits of one sample (`SampleStyle`) with ``rng``.

    Args:
        sample: the sample's index (recorded in the style).
        labels: its class ids (sorted, distinct, in ``0..27``).
        rng: NumPy generator, the only source of randomness.
        preset: the generator preset (its ``strength`` and ``expressing`` ranges).
    Returns:
        A frozen `SampleStyle`.
    """
    spec = get_preset(preset)
    labels = tuple(sorted(set(int(c) for c in labels)))
    return SampleStyle(
        sample=int(sample), labels=labels,
        strengths=tuple(float(v) for v in rng.uniform(*spec.strength, len(labels))),
        expressing=float(rng.uniform(*spec.expressing)),
        cell_scale=float(rng.uniform(0.8, 1.2)), cell_aspect=float(rng.uniform(0.9, 1.25)),
        background=tuple(float(v) for v in rng.uniform(0.3, 2.5, 4)),
        stain_gain=tuple(float(v) for v in rng.uniform(0.75, 1.3, 4)),
        blur=float(rng.uniform(0.6, 1.1)), shot_gain=float(rng.uniform(0.4, 1.2)),
        read_noise=float(rng.uniform(0.5, 2.0)),
        artefact_seed=int(rng.integers(2 ** 31)), artefact_amplitude=float(rng.uniform(0.6, 1.6)))


# ---------------------------------------------------------------------------------------------- dataset writer
def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image, independent of the order (and process) in which images are made."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODE[split], int(index)]))


def _render_and_write(task: tuple) -> None:
    """Worker: render one image and write its four PNGs (``task`` = folder, id, labels, size, seed, split, index,
    preset, masks folder or None[, sample style]); with a masks folder also ``{masks_folder}/{id}.npz`` (see
    `write_synthetic_dataset`)."""
    folder, image_id, labels, size, seed, split, index, preset, masks_folder, *style = task
    image = synthesize_field(labels, size=size, rng=_image_rng(seed, split, index), preset=preset,
                             return_masks=masks_folder is not None, style=style[0] if style else None)
    if masks_folder is not None:
        image, masks = image
        classes = sorted(masks)
        np.savez_compressed(os.path.join(masks_folder, f"{image_id}.npz"), classes=np.asarray(classes, np.int64),
                            masks=np.stack([masks[c] for c in classes]) if classes
                            else np.zeros((0, size, size), bool))
    for k, color in enumerate(CHANNELS):
        path = os.path.join(folder, f"{image_id}_{color}.png")
        if not cv2.imwrite(path, image[..., k]):
            raise DiskWriteError(f"cannot write {path}: cv2.imwrite failed; check that {folder} exists, is writable "
                                 f"and has free space, or write the dataset to another folder")


def _ids(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` Kaggle-style 36-character UUID strings from ``rng``."""
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]


def write_synthetic_dataset(out_dir: str | os.PathLike, *, n_train: int, n_test: int, size: int = REFERENCE_SIZE,
                            seed: int = 0, workers: int | None = None, overwrite: bool = False,
                            progress: bool = True, preset: "str | SyntheticPreset" = DEFAULT_PRESET,
                            masks: bool = False, fields_per_sample: int = 1) -> Path:
    """Write a synthetic HPA-like dataset in the Kaggle layout and return its folder.

    Layout: ``train.csv`` (``Id,Target``), ``sample_submission.csv`` (``Id,Predicted``, every row ``0``),
    ``test_labels.csv`` (``Id,Target`` of the test images, an addition for scoring), ``README.md``,
    ``train/`` and ``test/`` with ``{Id}_{red,green,blue,yellow}.png`` ((size, size) uint8 grayscale).
    Everything is written into a hidden temporary folder beside ``out_dir`` that is renamed onto ``out_dir``
    only at the end, so an interrupted run never looks complete. Same arguments -> byte-identical files,
    whatever ``workers``; the ``"hpa"`` preset (the default) writes exactly what this function wrote before
    presets existed.

    Args:
        out_dir: the dataset folder to create.
        n_train, n_test: numbers of images (n_train >= 1, n_test >= 0: a labelled-only dataset has a header-only
            ``sample_submission.csv``).
        size: image side in pixels (>= 32; Kaggle is 512).
        seed: seed of labels, ids and images.
        workers: processes rendering images; None = all CPUs, 0 or 1 = in this process.
        overwrite: replace an existing non-empty ``out_dir`` (otherwise that is an error).
        progress: show a tqdm progress bar.
        preset: a `PRESETS` name: ``"hpa"`` (realistic, default) or ``"demo"`` (learnable on a CPU in minutes).
        masks: also write ``masks/{train,test}/{Id}.npz`` per image (`np.savez_compressed`): ``classes`` (L,)
            int64, the image's class ids in increasing order, and ``masks`` (L, size, size) bool, each class's
            ground-truth pattern mask (`synthesize_field`); read them with `load_masks`. Off by default: the
            images and CSVs are the same either way.
        fields_per_sample: K fields of view per sample (`SampleStyle`: shared labels, pattern strengths, cell-line
            morphology and hidden signature). 1 (default) = every image its own sample, byte-identical to the
            files written before samples existed (no ``Sample`` column). K > 1: ``ceil((n_train + n_test) / K)``
            samples; their fields are shuffled over train and test, so some test images have a same-sample
            image in train; ``train.csv`` gets a ``Sample`` column and ``test_labels.csv`` the columns
            ``Sample`` and ``SampleInTrain`` (1 when the test image's sample also occurs in train).
    Returns:
        ``Path(out_dir)``.
    Raises:
        ConfigError: no training image or a negative count, a negative ``workers``, too small size, an unknown
            preset, or ``out_dir`` exists and is not empty without ``overwrite``.
    """
    out = Path(out_dir)
    spec = get_preset(preset)
    if int(n_train) < 1 or int(n_test) < 0:
        raise ConfigError(f"n_train={n_train}, n_test={n_test}: a dataset needs n_train >= 1 training images and "
                          f"n_test >= 0 test images (CLI: --n-train, --n-test)")
    if workers is not None and int(workers) < 0:
        raise ConfigError(f"workers={workers}: use None (all CPUs), 0 or 1 (this process) or a positive count")
    if int(size) < 32:
        raise ConfigError(f"size={size} is too small; use size >= 32 (Kaggle PNGs are 512)")
    if int(fields_per_sample) < 1:
        raise ConfigError(f"fields_per_sample={fields_per_sample}: use 1 (independent images) or more fields of "
                          f"view per sample (CLI: --fields-per-sample)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"{out}: exists and is not empty; choose a new folder or pass overwrite=True "
                          f"(CLI: --overwrite)")
    if int(fields_per_sample) == 1:  # the original draws, unchanged
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0]))
        split_labels = {"train": sample_labels(n_train, rng, spec.class_weights),
                        "test": sample_labels(n_test, rng, spec.class_weights)}
        split_ids = {"train": _ids(n_train, rng), "test": _ids(n_test, rng)}
        split_styles = None
    else:
        split_labels, split_ids, split_styles = _sampled_splits(int(n_train), int(n_test), int(fields_per_sample),
                                                                int(seed), spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tasks = []
        for split in ("train", "test"):
            (tmp / split).mkdir(parents=True)
            masks_folder = None
            if masks:
                (tmp / "masks" / split).mkdir(parents=True)
                masks_folder = str(tmp / "masks" / split)
            tasks += [(str(tmp / split), image_id, labels, int(size), int(seed), split, k, spec, masks_folder)
                      + (() if split_styles is None else (split_styles[split][k],))
                      for k, (image_id, labels) in enumerate(zip(split_ids[split], split_labels[split]))]
        _run_tasks(tasks, workers, progress)
        train_table = pd.DataFrame({"Id": split_ids["train"],
                                    "Target": [format_target(t) for t in split_labels["train"]]})
        test_table = pd.DataFrame({"Id": split_ids["test"], "Target": [format_target(t) for t in split_labels["test"]]})
        readme = README_TEXT.format(size=size, n_train=n_train, n_test=n_test, seed=seed, floor=CLASS_FLOOR_FRACTION,
                                    preset=spec.name, description=spec.description)
        if split_styles is not None:
            train_table["Sample"] = [_sample_name(st.sample) for st in split_styles["train"]]
            test_table["Sample"] = [_sample_name(st.sample) for st in split_styles["test"]]
            test_table["SampleInTrain"] = test_table["Sample"].isin(set(train_table["Sample"])).astype(int)
            readme += SAMPLES_README_TEXT.format(k=fields_per_sample, n_samples=len(set(train_table["Sample"])
                                                                                     | set(test_table["Sample"])),
                                                 n_leaky=int(test_table["SampleInTrain"].sum()), n_test=n_test)
        atomic_to_csv(train_table, tmp / "train.csv")
        atomic_to_csv(pd.DataFrame({"Id": split_ids["test"], "Predicted": ["0"] * n_test}), tmp / "sample_submission.csv")
        atomic_to_csv(test_table, tmp / "test_labels.csv")
        atomic_write_text(tmp / "README.md", readme)
        if out.exists():
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_masks(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """Read one image's ground-truth masks (``masks/{split}/{Id}.npz`` of ``write_synthetic_dataset(masks=True)``).

    Returns:
        {class id: (H, W) bool mask}.

    Raises:
        HpaDataError: missing or unreadable file, or one without the ``classes`` / ``masks`` arrays.
    """
    from hpa_zoo.errors import HpaDataError

    try:
        with np.load(path) as z:
            classes, masks = z["classes"], z["masks"]
    except (OSError, KeyError, ValueError) as exc:
        raise HpaDataError(f"{path}: not a synthetic mask file ({exc}); write them with hpa-zoo synth --masks") from exc
    if masks.ndim != 3 or len(classes) != len(masks):
        raise HpaDataError(f"{path}: {len(classes)} classes for masks of shape {masks.shape}; expected (L, H, W)")
    return {int(c): m.astype(bool) for c, m in zip(classes, masks)}


def _sample_name(sample: int) -> str:
    """The ``Sample`` column value of sample ``sample``: ``S00042``."""
    return f"S{int(sample):05d}"


def _sampled_splits(n_train: int, n_test: int, k: int, seed: int, spec: SyntheticPreset):
    """Labels, ids and `SampleStyle` per image of both splits when images come in samples of ``k`` fields.

    ``ceil(n / k)`` samples (n = n_train + n_test) get labels and a style; their fields (the last sample may have
    fewer) are shuffled and the first n_train go to train. Returns ({split: labels}, {split: ids},
    {split: styles}), each list in image order."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0, k]))
    n = n_train + n_test
    n_samples = -(-n // k)
    labels = sample_labels(n_samples, rng, spec.class_weights)
    ids = _ids(n, rng)
    of_image = np.repeat(np.arange(n_samples), k)[:n][rng.permutation(n)]
    styles = [make_sample_style(j, labels[j], np.random.default_rng(np.random.SeedSequence([seed, 3, j])), spec)
              for j in range(n_samples)]
    parts = {"train": of_image[:n_train], "test": of_image[n_train:]}
    id_parts = {"train": ids[:n_train], "test": ids[n_train:]}
    return ({sp: [styles[j].labels for j in part] for sp, part in parts.items()}, id_parts,
            {sp: [styles[j] for j in part] for sp, part in parts.items()})


def _run_tasks(tasks: list[tuple], workers: int | None, progress: bool) -> None:
    """Render every task, in this process or in spawn-started worker processes (safe after TensorFlow was
    imported; a worker that cannot start raises ``BrokenProcessPool`` instead of hanging)."""
    from tqdm.auto import tqdm

    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    with tqdm(total=len(tasks), desc="synthetic images", unit="img", disable=not progress) as bar:
        if workers <= 1 or len(tasks) < 8:
            for task in tasks:
                _render_and_write(task)
                bar.update()
            return
        context = multiprocessing.get_context("spawn")
        # one OpenCV thread per worker: the processes already use every core, threads would oversubscribe
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context, initializer=cv2.setNumThreads,
                                 initargs=(1,)) as pool:
            for _ in pool.map(_render_and_write, tasks, chunksize=4):
                bar.update()


def benchmark(size: int = REFERENCE_SIZE, n: int = 20, seed: int = 0) -> float:
    """Images per second of ``synthesize_field`` alone (one process, no PNG writing) at ``size``."""
    rng = np.random.default_rng(seed)
    labels = sample_labels(n, rng)
    start = time.perf_counter()
    for lab in labels:
        synthesize_field(lab, size=size, rng=rng)
    return n / (time.perf_counter() - start)
