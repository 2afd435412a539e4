"""CAM relevance of a trained model against an undertrained one, on synthetic ground-truth masks.

The paper (Ouyang et al. 2019, Fig. 3) observed by eye that better models attend to the right structures. This
measures it: the demo's model (``hpa-zoo demo``) at its best epoch and at epoch 1, Grad-CAM of every true class of
the validation images at the model's CAM layer (DenseNet121 "Block3"), scored against the generator's mask of that
class (``hpa-zoo synth --masks`` with the demo's arguments writes the same images plus the masks) with the pointing
game and the energy inside the mask (`hpa_zoo.infer.explain.score_cams`). Both models are also run through the whole
report (`hpa_zoo.analysis.report.figure_report`: Fig. 2, Supp. Fig. 2, the Fig. 3 panel and the relevance table).

    hpa-zoo demo --out /tmp/demo                       # keep a copy of checkpoints/best.weights.h5 after epoch 1
    hpa-zoo synth /tmp/demo_masks --n-train 2000 --n-test 200 --size 96 --seed 0 --preset demo --masks
    python benchmarks/cam_relevance.py --run /tmp/demo/train --early-weights epoch1.weights.h5 \\
        --images /tmp/demo/synthetic/train --masks /tmp/demo_masks/masks/train --out /tmp/cam_report

All numbers are on synthetic data: never HPA results.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

BANNER = "synthetic data — not an HPA result"


def _predict(model, images_dir: Path, ids: Sequence[str], batch: int = 32) -> np.ndarray:
    import keras

    from hpa_zoo.data.images import load_rgby

    size = int(model.input_shape[1])
    out = []
    for start in range(0, len(ids), batch):
        x = np.stack([load_rgby(images_dir, i, size=size) for i in ids[start:start + batch]]).astype(np.float32)
        out.append(np.asarray(keras.ops.sigmoid(model(x, training=False)), np.float32))
    return np.concatenate(out)


def measure(run: Path, early_weights: Path, images: Path, masks: Path, out: Path, *, per_class: int = 24,
            early_name: str = "epoch 1") -> dict:
    """Predict the validation images with both models, write the report with CAM relevance, return its summary."""
    from hpa_zoo.infer.ensemble import load_predictions, save_predictions
    from hpa_zoo.zoo.models_api import load
    from hpa_zoo.analysis.report import figure_report

    val = load_predictions(run / "val_predictions.csv")
    ids = list(val.ids)
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    trained = load(run / "preset")
    early = load(run / "preset")
    early.load_weights(str(early_weights))
    names = (f"best (epoch {best['epoch']})", early_name)
    csvs = []
    for name, model in zip(names, (trained, early)):
        t0 = time.time()
        probs = _predict(model, images, ids)
        csvs.append(save_predictions(out / "predictions" / f"{name.split(' ')[0]}.csv", ids, probs, model_name=name,
                                     fold=0))
        print(f"{name}: predicted {len(ids)} validation images in {time.time() - t0:.0f} s", flush=True)
    labels = out / "val_labels.csv"
    import pandas as pd

    from hpa_zoo.data.labels import format_target

    labels.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"Id": ids, "Target": [format_target(np.flatnonzero(r)) for r in val.y_true]}).to_csv(labels,
                                                                                                     index=False)
    t0 = time.time()
    summary = figure_report(csvs, labels, out_dir=out, data_label=BANNER, cam_models=list(zip(names, (trained, early))),
                            images_dir=images, masks_dir=masks, cam_images_per_class=per_class)
    summary["cam_seconds"] = round(time.time() - t0, 1)
    return summary


def table(summary: dict) -> str:
    """Markdown: per class the pointing game and energy of each model, chance, and the class mean."""
    rows = summary["cam_relevance"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    classes = list(dict.fromkeys(r["class"] for r in rows))
    get = {(r["model"], r["class"]): r for r in rows}
    head = "| class | images | " + " | ".join(f"pointing {m} | energy {m}" for m in models) + " | chance |"
    lines = [head, "|" + "---|" * (3 + 2 * len(models))]
    for c in classes:
        first = get[(models[0], c)]
        cells = " | ".join(f"{get[(m, c)]['pointing']:.2f} | {get[(m, c)]['energy']:.3f}" for m in models)
        lines.append(f"| {c} | {first['n']} | {cells} | {first['chance']:.3f} |")
    means = " | ".join(f"**{np.mean([get[(m, c)]['pointing'] for c in classes]):.3f}** | "
                       f"**{np.mean([get[(m, c)]['energy'] for c in classes]):.3f}**" for m in models)
    chance = np.mean([get[(models[0], c)]["chance"] for c in classes])
    lines.append(f"| mean over {len(classes)} classes | | {means} | {chance:.3f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="the demo's train/ folder")
    parser.add_argument("--early-weights", required=True, type=Path, help="the undertrained weights (epoch 1)")
    parser.add_argument("--images", required=True, type=Path, help="the validation images' folder")
    parser.add_argument("--masks", required=True, type=Path, help="their masks (synth --masks: masks/train)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--per-class", type=int, default=24, help="images scored per class and model")
    args = parser.parse_args(argv)
    summary = measure(args.run, args.early_weights, args.images, args.masks, args.out, per_class=args.per_class)
    for name, m in summary["models"].items():
        print(f"{name}: validation macro F1 {m['macro_f1']:.3f} ({BANNER})")
    text = table(summary)
    (args.out / "cam_relevance.md").write_text(f"CAM relevance ({BANNER})\n\n{text}\n")
    print(text)
    print(f"report: {summary['html']} (CAM sections {summary['cam_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
