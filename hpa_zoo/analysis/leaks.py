"""Same-sample leak audit between two image sets (train vs test, Kaggle vs HPAv18): the paper's hidden variable.

Ouyang et al. 2019 found that Team 1's metric-learning model scored by matching test images to HPAv18 images of
the **same sample** (antibody and cell line), not by learning localisation (docs/teams.md §1.7). Such pairs inflate
any validation that splits them. `audit` ranks the suspicious pairs between set A and set B with up to three
signals:

* ``phash``: the pHash Hamming distance of `hpa_zoo.data.folds` (the largest over the R, G, B stains; near-duplicates
  are <= `hpa_zoo.data.folds.MAX_HAMMING_DISTANCE`);
* ``feature_cosine``: the cosine of a classifier's features (Team 1: the 1024-d `feature_extractor` output);
* ``embedding_cosine``: optionally, Team 1's metric-learning embedding (`zoo_models.teams.team1_metric_learning.match`:
  per-set standardisation, cosine, 0.65 cut-off).

Each A image's best B partner by each signal becomes a candidate pair; the ranked ``pairs.csv`` has every signal
for every candidate, ``pairs.png`` shows the top pairs side by side, and with the truth (a ``Sample`` column in
each set's CSV) ``audit.json`` gives each signal's recall (A images with a same-sample partner in B whose partner
it found) and precision.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from hpa_zoo.errors import ConfigError

log = logging.getLogger(__name__)

#: a feature-cosine "match" for the recall figure (hpa-zoo's choice; the metric-learning cut-off is Team 1's 0.65)
FEATURE_THRESHOLD = 0.9


def feature_model(model_or_preset, *, weights=None, layer: str | None = None, image_size: int | None = None):
    """The feature extractor of a registry name or preset (its ``feature_layer``, or ``layer``): a keras.Model
    (B, S, S, 4) float32 [0, 255] -> (B, F). Load it once and use it for both sets: two loads of a model without
    published weights would be two different random networks."""
    from hpa_zoo.zoo import models_api

    path = Path(str(model_or_preset))
    shape = None if image_size is None else (image_size, image_size, 4)
    model = (models_api.load(path) if path.is_dir() else
             models_api.load(str(model_or_preset), weights=weights, input_shape=shape))
    return models_api.feature_extractor(model, layer=layer)


def image_features(extractor, folder, *, batch_size: int = 8) -> tuple[list[str], np.ndarray]:
    """(ids, features (N, F) float32) of the RGBY images of an HPA-layout folder: the whole image at the
    extractor's input size (`hpa_zoo.infer.predict_images.read_item`)."""
    from hpa_zoo.data.user_images import discover, read_item

    size = int(extractor.input_shape[1])
    items, _ = discover(folder, stains=["red", "green", "blue", "yellow"])
    feats = []
    for start in range(0, len(items), 32):
        batch = np.stack([read_item(it, 4, size) for it in items[start:start + 32]]).astype(np.float32)
        feats.append(np.asarray(extractor.predict(batch, batch_size=batch_size, verbose=0), np.float32))
    return [it.id for it in items], np.concatenate(feats)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def audit(a_dir, b_dir, *, out_dir, model="team1_densenet121_512", weights=None, embedding_model=None,
          embedding_weights=None, a_csv=None, b_csv=None, image_size: int | None = None, top: int = 24,
          thumbnails: bool = True) -> dict:
    """Rank the suspicious same-sample pairs between two HPA-layout folders (module docstring).

    Args:
        a_dir, b_dir: the two folders of ``{id}_{red,green,blue,yellow}`` images.
        out_dir: where ``pairs.csv``, ``pairs.png`` and ``audit.json`` go.
        model / weights: the classifier whose features are compared (registry name or preset); None skips them.
        embedding_model / embedding_weights: Team 1's metric-learning model (``team1_arcface_resnet50_768``
            trained on your samples) or any preset with an ``embedding`` layer; None skips it.
        a_csv, b_csv: CSVs with ``Id`` and ``Sample`` columns (the truth) for recall / precision.
        image_size: the feature models' input side (default the row's).
        top: pairs in the thumbnail sheet.
        thumbnails: write ``pairs.png``.

    Returns:
        The summary dict (also ``audit.json``): pair counts, and per signal recall / precision when the truth is
        given.

    Raises:
        ConfigError / HpaDataError: bad arguments or folders (named).
    """
    import pandas as pd

    from hpa_zoo.atomic import atomic_to_csv, atomic_write_text
    from hpa_zoo.data.folds import MAX_HAMMING_DISTANCE, hamming, image_hashes
    from hpa_zoo.data.user_images import discover

    if top < 0:
        raise ConfigError(f"top={top}: use >= 0")
    out_dir = Path(out_dir)
    ids_a = [it.id for it in discover(a_dir, stains=["red", "green", "blue", "yellow"])[0]]
    ids_b = [it.id for it in discover(b_dir, stains=["red", "green", "blue", "yellow"])[0]]
    ha, hb = image_hashes(a_dir, ids_a), image_hashes(b_dir, ids_b)
    phash = hamming(ha[:, None, :], hb[None, :, :]).max(axis=2)  # (A, B): every stain must be close
    signals = {"phash": (phash, phash.argmin(axis=1), phash.min(axis=1) <= MAX_HAMMING_DISTANCE)}
    if model is not None:
        extractor = feature_model(model, weights=weights, image_size=image_size)
        fa_ids, fa = image_features(extractor, a_dir)
        fb_ids, fb = image_features(extractor, b_dir)
        _check_order(fa_ids, ids_a, fb_ids, ids_b)
        cos = _cosine(fa, fb)
        signals["feature_cosine"] = (cos, cos.argmax(axis=1), cos.max(axis=1) > FEATURE_THRESHOLD)
    if embedding_model is not None:
        from hpa_zoo.nn.matching import MATCH_THRESHOLD, standardise

        extractor = feature_model(embedding_model, weights=embedding_weights, layer="embedding",
                                  image_size=image_size)
        ea_ids, ea = image_features(extractor, a_dir)
        eb_ids, eb = image_features(extractor, b_dir)
        _check_order(ea_ids, ids_a, eb_ids, ids_b)
        cos = _cosine(standardise(ea), standardise(eb))
        signals["embedding_cosine"] = (cos, cos.argmax(axis=1), cos.max(axis=1) > MATCH_THRESHOLD)

    candidates = sorted({(i, int(best[i])) for _, best, _ in signals.values() for i in range(len(ids_a))})
    rows = []
    for i, j in candidates:
        row = {"a_id": ids_a[i], "b_id": ids_b[j]}
        for name, (matrix, best, hit) in signals.items():
            row[name] = int(matrix[i, j]) if name == "phash" else float(matrix[i, j])
            row[f"{name}_best"] = bool(best[i] == j)
            row[f"{name}_match"] = bool(best[i] == j and hit[i])
        rows.append(row)
    frame = pd.DataFrame(rows)
    order = ["embedding_cosine", "feature_cosine"]
    key = next((k for k in order if k in frame), None)
    frame = (frame.sort_values([key, "phash"], ascending=[False, True]) if key else frame.sort_values("phash"))
    frame = frame.reset_index(drop=True)
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    truth = _truth(a_csv, b_csv)
    if truth is not None:
        frame["same_sample"] = [truth[0].get(a) is not None and truth[0].get(a) == truth[1].get(b)
                                for a, b in zip(frame["a_id"], frame["b_id"])]
    written = {"pairs_csv": str(atomic_to_csv(frame, out_dir / "pairs.csv", float_format="%.5f"))}
    summary = {"n_a": len(ids_a), "n_b": len(ids_b), "n_candidates": len(frame), "signals": list(signals)}
    if truth is not None:
        summary["recall_precision"] = _scores(ids_a, ids_b, signals, truth)
    if thumbnails and len(frame):
        written["pairs_png"] = str(_sheet(frame.head(top), a_dir, b_dir, out_dir / "pairs.png"))
    summary.update(written)
    written["audit_json"] = str(atomic_write_text(out_dir / "audit.json", json.dumps(summary, indent=2)))
    summary["audit_json"] = written["audit_json"]
    log.info("leaks: %d candidate pairs between %d and %d images%s", len(frame), len(ids_a), len(ids_b),
             f"; {summary['recall_precision']}" if truth is not None else "")
    return summary


def _check_order(a_ids, ids_a, b_ids, ids_b) -> None:
    if list(a_ids) != list(ids_a) or list(b_ids) != list(ids_b):
        raise ConfigError("leaks.audit: the folders were read in two orders; the images changed during the audit?")


def _truth(a_csv, b_csv):
    """({id: sample} of A, {id: sample} of B) from CSVs with Id and Sample columns, or None."""
    if a_csv is None and b_csv is None:
        return None
    import pandas as pd

    maps = []
    for csv in (a_csv, b_csv):
        if csv is None:
            raise ConfigError("leaks.audit: give both a_csv and b_csv (Id, Sample) for the truth, or neither")
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
        if not {"Id", "Sample"} <= set(table.columns):
            raise ConfigError(f"{csv}: columns {list(table.columns)}; the truth needs Id and Sample")
        maps.append(dict(zip(table["Id"], table["Sample"])))
    return maps[0], maps[1]


def _scores(ids_a: Sequence[str], ids_b: Sequence[str], signals: dict, truth) -> dict:
    """Per signal: recall = A images with a same-sample image in B whose best match by the signal is one of
    them (and passes its cut-off), precision = such correct matches / all matches of the signal."""
    sample_a, sample_b = truth
    b_samples = {}
    for j, b in enumerate(ids_b):
        b_samples.setdefault(sample_b.get(b), set()).add(j)
    with_partner = [i for i, a in enumerate(ids_a) if sample_a.get(a) in b_samples and sample_a.get(a)]
    out = {"a_images_with_a_partner": len(with_partner)}
    for name, (_, best, hit) in signals.items():
        correct = [i for i in range(len(ids_a)) if hit[i] and int(best[i]) in b_samples.get(sample_a.get(ids_a[i]),
                                                                                             set())]
        n_hit = int(np.sum(hit))
        out[name] = {"recall": len(correct) / len(with_partner) if with_partner else None,
                     "precision": len(correct) / n_hit if n_hit else None, "matches": n_hit}
    return out


def _sheet(frame, a_dir, b_dir, path: Path) -> Path:
    """A PNG of the pairs: A's and B's RGB composites side by side, one row per pair, with the signals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hpa_zoo.atomic import atomic_path
    from hpa_zoo.data.images import load_rgby

    n = len(frame)
    fig, axes = plt.subplots(n, 2, figsize=(4.4, 2.2 * n), squeeze=False)
    for k, row in enumerate(frame.itertuples()):
        for col, (folder, image_id) in enumerate(((a_dir, row.a_id), (b_dir, row.b_id))):
            rgb = load_rgby(folder, image_id, size=128)[..., :3]
            axes[k, col].imshow(rgb)
            axes[k, col].set_axis_off()
            axes[k, col].set_title(str(image_id)[:22], fontsize=6)
        signals = [f"pHash {row.phash}"] + [f"{name.split('_')[0]} {getattr(row, name):.2f}"
                                             for name in ("feature_cosine", "embedding_cosine") if hasattr(row, name)]
        axes[k, 0].text(0, -22, f"#{row.rank}: " + ", ".join(signals), fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
