"""The paper's figures from any predictions: ``hpa-zoo report PRED.csv... --labels CSV --out DIR``.

From predictions CSVs with their `hpa_zoo.infer.ensemble` sidecars (what ``train``, ``predict`` and ``compare_teams``
write) and the true labels, `figure_report` draws the analyses of Ouyang et al. 2019 (Nature Methods), Fig. 2:

* **2a** class counts of the labelled images (and of a training CSV when given), log scale;
* **2b** micro-averaged precision-recall curve of each model, its operating point, and the paper's expert
  annotators as a labelled reference point (precision 0.74, recall 0.69: theirs, on HPA images);
* **2c** per-class F1 of each model, classes ordered by frequency;
* **2d** macro F1 over single-label vs multi-label images;
* **Supp. Fig. 2** the confusion matrix over single-label images (rows = true class, normalised; the predicted
  class is the argmax);

and writes them as PNGs beside one self-contained ``report.html`` (images embedded as base64), plus
``per_class_f1.csv`` and ``summary.json``. Every figure says which data it shows (``data_label``): synthetic
numbers are never HPA results.
"""
from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from hpa_zoo.constants import CLASS_NAMES
from hpa_zoo.errors import ConfigError, HpaDataError

log = logging.getLogger(__name__)

#: Ouyang et al. 2019, Fig. 2b: the expert annotators' precision and recall (on HPA images; the paper's figure).
EXPERTS = {"precision": 0.74, "recall": 0.69}


def _labels(labels_csv, ids, num_classes: int) -> np.ndarray:
    from hpa_zoo.data.labels import multi_hot_matrix, read_labels_csv

    table = read_labels_csv(labels_csv, num_classes=num_classes)
    index = dict(zip(table["Id"], table["labels"]))
    missing = [i for i in ids if i not in index]
    if missing:
        raise HpaDataError(f"{labels_csv}: no labels for {len(missing)} predicted ids, e.g. {missing[:3]}; pass the "
                           f"labels of the images the predictions are for")
    return multi_hot_matrix([index[i] for i in ids], num_classes).astype(bool)


def _binarise(probs: np.ndarray, threshold: float, force_top: bool) -> np.ndarray:
    pred = probs > threshold
    if force_top:
        pred[np.arange(len(probs)), probs.argmax(1)] = True
    return pred


def confusion_single_label(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-normalised confusion matrix over the single-label images (Supp. Fig. 2).

    Args:
        y_true: (N, K) bool; probs: (N, K) float.
    Returns:
        (matrix (K, K) float64, rows = true class, each row summing to 1 where the class occurs (else 0),
        counts (K,) int64 of single-label images per true class).
    """
    single = y_true.sum(1) == 1
    k = y_true.shape[1]
    truth = y_true[single].argmax(1)
    pred = probs[single].argmax(1)
    counts = np.zeros((k, k), np.int64)
    np.add.at(counts, (truth, pred), 1)
    rows = counts.sum(1)
    return counts / np.maximum(rows, 1)[:, None], rows


def figure_report(predictions: Sequence, labels_csv, *, out_dir, data_label: str, train_csv=None,
                  threshold: float = 0.5, force_top: bool = True, class_names: Sequence[str] = CLASS_NAMES,
                  cam_models: Sequence | None = None, images_dir=None, masks_dir=None,
                  image_size: int | None = None, cam_images_per_class: int = 24,
                  cam_layers: dict | None = None) -> dict:
    """Write the Fig. 2 report (module docstring) and return its summary.

    Args:
        predictions: predictions CSV paths (``Id`` + one probability column per class; sidecar optional).
        labels_csv: ``Id,Target`` CSV of the predicted images; None uses the ``Target`` column of the first
            predictions file (``val_predictions.csv`` from ``hpa-zoo train`` has one).
        out_dir: output folder.
        data_label: what the images are, printed on every figure (``"synthetic data — not an HPA result"``, or
            the name of your dataset).
        train_csv: an ``Id,Target`` CSV of the training images, for Fig. 2a.
        threshold: probability threshold of each class (the operating point); ``force_top``: the top class is
            always on (Team 1's rule).
        class_names: the K class columns.
        cam_models: (name, keras model) pairs for the Fig. 3 Grad-CAM panel (`hpa_zoo.analysis.report_cams`), drawn from
            the labelled images found in ``images_dir``; None: no panel.
        masks_dir: ground-truth masks (``{Id}.npz``, ``hpa-zoo synth --masks``): adds the CAM-relevance table
            (pointing game, energy inside the mask) per class and model over up to ``cam_images_per_class``.
        image_size: side the CAM images are loaded at (default each model's input size).
        cam_layers: {model name: layer} for the Grad-CAMs; default each model's registry ``cam_layer`` (DenseNet
            "Block3", Inception "Mixed_7c", ResNet "Layer3"). The report names the layer of each model.

    Returns:
        dict with per model ``macro_f1``, ``micro_precision``, ``micro_recall``, ``single_label_macro_f1``,
        ``multi_label_macro_f1``, and the paths written.

    Raises:
        ConfigError: no predictions, or files for different images.
        HpaDataError: ids without labels, unreadable CSVs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from hpa_zoo.atomic import atomic_path, atomic_to_csv, atomic_write_text
    from hpa_zoo.infer.ensemble import load_predictions
    from hpa_zoo.nn.metrics import f1_report

    if not predictions:
        raise ConfigError("report: give at least one predictions CSV")
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold={threshold}: use a probability in (0, 1)")
    if masks_dir is not None and not cam_models:
        raise ConfigError("masks_dir (CLI --masks) scores the models' Grad-CAMs: also pass cam_models and images_dir "
                          "(CLI: --images with a run folder or --models)")
    out_dir = Path(out_dir)
    preds = [load_predictions(p, class_names=class_names) for p in predictions]
    names = [p.model_name or Path(p.path).stem for p in preds]
    ids = list(preds[0].ids)
    for p in preds[1:]:
        if sorted(p.ids) != sorted(ids):
            raise ConfigError(f"{p.path} predicts other images than {preds[0].path}; a report compares models on "
                              f"the same images")
    probs = [p.probs[[list(p.ids).index(i) for i in ids]] if list(p.ids) != ids else p.probs for p in preds]
    k = len(class_names)
    if labels_csv is not None:
        y = _labels(labels_csv, ids, k)
    elif preds[0].y_true is not None:  # val_predictions.csv carries the labels (Target column)
        y = preds[0].y_true[[list(preds[0].ids).index(i) for i in ids]].astype(bool)
    else:
        raise ConfigError(f"{preds[0].path} has no Target column: pass labels_csv (CLI: --labels)")
    binary = [_binarise(pr, threshold, force_top) for pr in probs]
    reports = [f1_report(y.astype(np.uint8), b.astype(np.uint8), class_names) for b in binary]
    figures: dict[str, Path] = {}
    caption = f"data: {data_label}"

    def save(fig, name: str) -> None:
        fig.suptitle(caption, fontsize=7, color="0.35", y=1.03)
        with atomic_path(out_dir / f"{name}.png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)
        figures[name] = out_dir / f"{name}.png"

    freq = y.sum(0)
    order = np.argsort(-freq, kind="stable")
    # 2a: class counts
    fig, ax = plt.subplots(figsize=(10, 3.2))
    width = 0.4 if train_csv else 0.8
    ax.bar(np.arange(k) - (width / 2 if train_csv else 0), freq[order], width, label="evaluated images")
    if train_csv:
        from hpa_zoo.data.labels import multi_hot_matrix, read_labels_csv

        train = multi_hot_matrix(read_labels_csv(train_csv, num_classes=k)["labels"], k).sum(0)
        ax.bar(np.arange(k) + width / 2, train[order], width, label="training images")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(k), [class_names[i] for i in order], rotation=90, fontsize=7)
    ax.set_ylabel("images")
    ax.set_title("Fig. 2a — class counts")
    ax.legend(fontsize=7)
    save(fig, "fig2a_class_counts")
    # 2b: precision-recall (micro) with the experts' point
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    summary: dict = {"data": data_label, "threshold": threshold, "force_top": force_top, "models": {}}
    for name, pr, b, rep in zip(names, probs, binary, reports):
        curve = []
        for t in np.linspace(0.01, 0.99, 50):
            pb = _binarise(pr, t, force_top)
            tp = float((pb & y).sum())
            curve.append((tp / max(pb.sum(), 1), tp / max(y.sum(), 1)))
        c = np.asarray(curve)
        tp = float((b & y).sum())
        prec, rec = tp / max(b.sum(), 1), tp / max(y.sum(), 1)
        line, = ax.plot(c[:, 1], c[:, 0], lw=1.2, label=name)
        ax.plot([rec], [prec], "o", color=line.get_color())
        summary["models"][name] = {"macro_f1": rep["macro_f1"], "micro_precision": prec, "micro_recall": rec,
                                   "single_label_macro_f1": rep["single_label_macro_f1"],
                                   "multi_label_macro_f1": rep["multi_label_macro_f1"], "n_images": len(ids)}
    ax.plot([EXPERTS["recall"]], [EXPERTS["precision"]], "k*", ms=11,
            label="experts (the paper's figure, HPA images)")
    ax.set_xlabel("recall (micro)")
    ax.set_ylabel("precision (micro)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Fig. 2b — precision-recall")
    ax.legend(fontsize=6, loc="lower left")
    save(fig, "fig2b_precision_recall")
    # 2c: per-class F1 by frequency
    fig, ax = plt.subplots(figsize=(10, 3.4))
    rows = []
    for name, rep in zip(names, reports):
        f1 = np.asarray([rep["per_class"][name]["f1"] for name in class_names], np.float64)
        ax.plot(np.arange(k), f1[order], "o-", ms=3, lw=1, label=name)
        rows += [{"model": name, "class": class_names[c], "support": int(freq[c]), "f1": float(f1[c])}
                 for c in range(k)]
    ax.set_xticks(np.arange(k), [class_names[i] for i in order], rotation=90, fontsize=7)
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1)
    ax.set_title("Fig. 2c — per-class F1, classes by frequency")
    ax.legend(fontsize=7)
    save(fig, "fig2c_per_class_f1")
    # 2d: single vs multi-label
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    x = np.arange(len(names))
    single = [rep["single_label_macro_f1"] or 0.0 for rep in reports]
    multi = [rep["multi_label_macro_f1"] or 0.0 for rep in reports]
    ax.bar(x - 0.2, single, 0.4, label=f"single-label ({reports[0]['n_single_label']} images)")
    ax.bar(x + 0.2, multi, 0.4, label=f"multi-label ({reports[0]['n_multi_label']} images)")
    ax.set_xticks(x, names, rotation=20, fontsize=7)
    ax.set_ylabel("macro F1")
    ax.set_title("Fig. 2d — single- vs multi-label images")
    ax.legend(fontsize=7)
    save(fig, "fig2d_single_multi")
    # Supp. Fig. 2: confusion over single-label images (first model)
    matrix, counts = confusion_single_label(y, probs[0])
    present = np.flatnonzero(counts)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    im = ax.imshow(matrix[np.ix_(present, present)], vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(np.arange(len(present)), [class_names[i] for i in present], rotation=90, fontsize=6)
    ax.set_yticks(np.arange(len(present)), [class_names[i] for i in present], fontsize=6)
    ax.set_xlabel("predicted (argmax)")
    ax.set_ylabel("true (single-label images)")
    ax.set_title(f"Supp. Fig. 2 — confusion, {names[0]}")
    fig.colorbar(im, ax=ax, fraction=0.04)
    save(fig, "supp_fig2_confusion")
    np.savetxt(out_dir / "confusion_single_label.csv", matrix, delimiter=",", fmt="%.6f")
    cam_html = ""
    if cam_models:
        if images_dir is None:
            raise ConfigError("the Fig. 3 Grad-CAM panel needs the images: pass images_dir (CLI: --images)")
        from hpa_zoo.analysis.report_cams import cam_sections

        cams = cam_sections(cam_models, ids, y, images_dir=images_dir, out_dir=out_dir, save=save,
                            masks_dir=masks_dir, image_size=image_size, max_per_class=cam_images_per_class,
                            class_names=class_names, layers=cam_layers)
        summary["cam_layers"], summary["cam_relevance"] = cams["layers"], cams["relevance"]
        summary["cam_panel"] = [{"class": class_names[c], "kind": kind, "id": i} for c, kind, i in cams["picks"]]
        cam_html = cams["html"]

    written = {"per_class_f1": str(atomic_to_csv(pd.DataFrame(rows), out_dir / "per_class_f1.csv",
                                                 float_format="%.6f"))}
    if cam_models and summary.get("cam_relevance") is not None:
        written["cam_relevance"] = str(out_dir / "cam_relevance.csv")
    written.update({name: str(path) for name, path in figures.items()})
    summary["files"] = written
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    html = _html(summary, figures, names).replace("</body>", cam_html + "</body>")
    summary["html"] = str(atomic_write_text(out_dir / "report.html", html))
    log.info("report: %d models on %d images (%s) -> %s", len(names), len(ids), data_label, summary["html"])
    return summary


def _html(summary: dict, figures: dict, names: list[str]) -> str:
    """One self-contained page: the figures embedded as base64 PNGs, the per-model table, the data label."""
    rows = "".join(f"<tr><td>{n}</td><td>{m['macro_f1']:.3f}</td><td>{m['micro_precision']:.3f}</td>"
                   f"<td>{m['micro_recall']:.3f}</td><td>{_f(m['single_label_macro_f1'])}</td>"
                   f"<td>{_f(m['multi_label_macro_f1'])}</td></tr>" for n, m in summary["models"].items())
    images = "".join(f"<figure><img alt='{name}' src='data:image/png;base64,"
                     f"{base64.b64encode(path.read_bytes()).decode()}'/><figcaption>{name}</figcaption></figure>"
                     for name, path in figures.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>hpa-zoo report</title><style>"
            f"body{{font-family:sans-serif;max-width:1100px;margin:auto}} img{{max-width:100%}} "
            f"td,th{{padding:2px 8px;text-align:right}} .data{{color:#a00}}</style></head><body>"
            f"<h1>hpa-zoo report</h1><p class='data'>Data: {summary['data']}. The experts' point in Fig. 2b is "
            f"the paper's figure on HPA images, shown for reference only.</p>"
            f"<p>Threshold {summary['threshold']}, top class always on: {summary['force_top']}.</p>"
            f"<table><tr><th>model</th><th>macro F1</th><th>precision</th><th>recall</th><th>single-label</th>"
            f"<th>multi-label</th></tr>{rows}</table>{images}</body></html>")


def _f(x) -> str:
    return "–" if x is None else f"{x:.3f}"
