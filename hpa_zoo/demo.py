"""``hpa-zoo demo``: the whole workflow end to end on a small SYNTHETIC dataset, on a laptop CPU.

synthesise (`hpa_zoo.synthetic`) -> build the TFDS dataset (``hpa_kaggle/128`` from the synthetic folder as the
manual-download dir) -> train Team 1's recipe (`hpa_zoo.training.train`, DenseNet121 at a small size, few
epochs) -> validation report (macro F1 table + per-class F1 bar chart) -> predict the synthetic test split into
a submission (`hpa_zoo.predict.predict`, Team 1's TTA and thresholds).

The numbers it prints are about synthetic images: they show the code runs, they are not an HPA result.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from hpa_zoo.atomic import atomic_path, atomic_write_text
from hpa_zoo.constants import CLASS_NAMES

#: Printed and written wherever a demo number appears.
BANNER = "synthetic data — not an HPA result"

#: The model the demo trains (Team 1's DenseNet121 classifier, teams.md §1.2).
DEMO_MODEL = "team1_densenet121_512"

#: TFDS config the synthetic images are stored at (`tfds_hpa` builds 128/512/1024/1536).
TFDS_CONFIG = "128"


def run_demo(out_dir: str | os.PathLike = "hpa_zoo_demo", *, n_train: int = 300, n_test: int = 60,
             size: int = 128, image_size: Optional[int] = None, input_size: Optional[int] = None,
             epochs: int = 4, batch_size: int = 16, seed: int = 0, tta: str = "default",
             model_name: str = DEMO_MODEL, verbose: int = 1) -> Path:
    """Run the synthetic end-to-end demo and return the path of its Markdown report.

    Args:
        out_dir: everything goes here (``synthetic/``, ``tfds/``, ``train/``, ``submission/``, ``report.md``,
            ``per_class_f1.png``). A re-run reuses the dataset and resumes training.
        n_train, n_test: synthetic images in the train / test split.
        size: side of the synthetic images.
        image_size: side the training images are loaded at (default ``size``);
            input_size: network input (default 3/4 of image_size, Team 1's 1536 -> 1024 ratio is 2/3).
        epochs, batch_size: training length (the Adam step schedule is scaled to ``epochs``).
        seed: data and training seed.
        tta: "default" (Team 1: 8 dihedral x (whole + 3 random crops), max) or "none".
        model_name: the registered model to train (default Team 1's DenseNet121; any row with a recipe).
        verbose: 0 silent, 1 progress.
    Returns:
        ``out_dir / "report.md"``.
    """
    import tfds_hpa

    from hpa_zoo.predict import predict
    from hpa_zoo.synthetic import write_synthetic_dataset
    from hpa_zoo.training import train

    out = Path(out_dir)
    image_size = image_size or size
    input_size = input_size or max(32, (image_size * 3 // 4) // 16 * 16)
    timings: dict[str, float] = {}
    say = (lambda msg: print(msg, flush=True)) if verbose else (lambda msg: None)
    say(f"hpa-zoo demo ({BANNER}) -> {out}")

    t = time.time()
    synthetic = out / "synthetic"
    if not (synthetic / "train.csv").is_file():
        say(f"[1/5] writing {n_train} train + {n_test} test synthetic images ({size}px) to {synthetic}")
        write_synthetic_dataset(synthetic, n_train=n_train, n_test=n_test, size=size, seed=seed)
    else:
        say(f"[1/5] reusing the synthetic dataset in {synthetic}")
    timings["synthesise"] = time.time() - t

    t = time.time()
    tfds_dir = out / "tfds"
    say(f"[2/5] building TFDS hpa_kaggle/{TFDS_CONFIG} in {tfds_dir}")
    tfds_hpa.build("hpa_kaggle", manual_dir=synthetic, data_dir=tfds_dir, config=TFDS_CONFIG)
    timings["tfds build"] = time.time() - t

    t = time.time()
    data = f"hpa_kaggle/{TFDS_CONFIG}"
    say(f"[3/5] training {model_name}: {image_size}px -> {input_size}px, {epochs} epochs, batch {batch_size}")
    preset = train(model_name, data, data_dir=tfds_dir, fold=0, out_dir=out / "train", epochs=epochs,
                   image_size=image_size, input_size=input_size, batch_size=batch_size, seed=seed,
                   verbose=verbose)
    timings["train"] = time.time() - t

    t = time.time()
    say("[4/5] validation report")
    report = json.loads((out / "train" / "val_report.json").read_text())
    png = plot_per_class_f1(report, out / "per_class_f1.png",
                            title=f"{model_name}, fold 0 validation — {BANNER}")
    timings["report"] = time.time() - t

    t = time.time()
    say(f"[5/5] predicting the synthetic test split (TTA {tta})")
    submission, probabilities = predict(preset, data, data_dir=tfds_dir, out_dir=out / "submission", tta=tta,
                                        batch_size=batch_size, verbose=verbose)
    timings["predict"] = time.time() - t

    path = _write_report(out, model_name, report, png, preset, submission, probabilities, timings,
                         dict(n_train=n_train, n_test=n_test, size=size, image_size=image_size,
                              input_size=input_size, epochs=epochs, batch_size=batch_size, seed=seed, tta=tta))
    say(f"demo done in {sum(timings.values()):.0f}s — validation macro F1 {_macro(report):.4f} ({BANNER})\n"
        f"  report:     {path}\n  chart:      {png}\n  submission: {submission}")
    return path


def plot_per_class_f1(report: dict, path: str | os.PathLike, *, title: str) -> Path:
    """Horizontal bar chart of the per-class F1 of an `hpa_zoo.metrics.f1_report` dict, saved as PNG.

    Args:
        report: the f1_report dict (per-class F1 under ``per_class``; a list of 28 or a name -> dict mapping).
        path: the PNG to write (atomically).
        title: chart title.
    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f1 = per_class_f1(report)
    fig, ax = plt.subplots(figsize=(8, 9))
    y = range(len(CLASS_NAMES))
    ax.barh(list(y), f1, color="tab:blue")
    ax.set_yticks(list(y))
    ax.set_yticklabels([f"{i} {n}" for i, n in enumerate(CLASS_NAMES)], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    ax.set_title(title, fontsize=9)
    ax.axvline(_macro(report), color="tab:red", linestyle="--", label=f"macro F1 {_macro(report):.3f}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def per_class_f1(report: dict) -> list[float]:
    """The 28 per-class F1 values of an f1_report dict, in class order."""
    per = report.get("per_class")
    if isinstance(per, dict):
        return [float(per[name]["f1"]) for name in CLASS_NAMES]
    if isinstance(per, list):
        return [float(row["f1"] if isinstance(row, dict) else row) for row in per]
    return [float(v) for v in report["f1"]]


def _macro(report: dict) -> float:
    return float(report.get("macro_f1", report.get("macro", 0.0)))


def _write_report(out: Path, model_name: str, report: dict, png: Path, preset: Path, submission: Path, probabilities: Path,
                  timings: dict, settings: dict) -> Path:
    from hpa_zoo import metrics

    table = metrics.report_to_markdown(report)
    steps = "\n".join(f"| {k} | {v:.1f} |" for k, v in timings.items())
    text = (
        f"# hpa-zoo demo — {BANNER}\n\n"
        f"**{BANNER[0].upper() + BANNER[1:]}.** These images are generated by `hpa_zoo.synthetic`; the scores below show "
        f"that the pipeline runs end to end, nothing about Human Protein Atlas performance.\n\n"
        f"Model: `{model_name}`, trained with its team recipe (Team 1: BestfittingLoss, random-scale crop + D4, "
        f"Adam step schedule, LB-ratio thresholds with the top class forced on), settings: "
        f"`{json.dumps(settings)}`.\n\n"
        f"## Validation (fold 0) — {BANNER}\n\n{table}\n\n![per-class F1]({png.name})\n\n"
        f"## Files\n\n- preset: `{preset}`\n- submission: `{submission}`\n- probabilities: `{probabilities}`\n"
        f"- training log: `{out / 'train' / 'training_log.csv'}`\n\n"
        f"## Time (s)\n\n| step | seconds |\n|---|---|\n{steps}\n| total | {sum(timings.values()):.1f} |\n"
    )
    return atomic_write_text(out / "report.md", text)
