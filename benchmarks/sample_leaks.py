"""Same-sample leaks on SYNTHETIC data with samples: how much an image-level split inflates validation macro F1,
and how many planted same-sample pairs each audit signal finds. Synthetic numbers, never HPA results.

Part ``split``: a dataset of K fields per sample (`hpa_zoo.data.synthetic`, ``fields_per_sample``); 5-fold multilabel
stratified folds (`hpa_zoo.data.folds.make_folds`) once per image (a random image-level split) and once per sample
(``groups`` = the Sample column, what ``hpa-zoo folds --group-by-sample`` does); two cheap models per fold: the
project's pixel-statistics logistic baseline (`hpa_zoo.train.baselines.PixelStatsBaseline`) and a 1-nearest-neighbour
on the same standardised pixel statistics (it copies the labels of the closest training image: a pure
memoriser). Output: mean validation macro F1 (`hpa_zoo.nn.metrics.macro_f1`) per split, and the inflation.

Part ``audit``: test images (set A) against train images (set B), the truth from ``test_labels.csv`` /
``train.csv``: `hpa_zoo.analysis.leaks.audit` with pHash, the cosine of a classifier's features (Team 1's DenseNet121
with **random** weights here: no HPA weights can be downloaded on this machine) and Team 1's metric-learning
embedding trained on the train samples for a few epochs (`hpa_zoo.train.metric_learning.train_metric_learning`,
Team 1's recipe at a tiny input). Output: recall / precision at each signal's cut-off and recall@1 (best partner
is a same-sample image, no cut-off).

    python benchmarks/sample_leaks.py --out /tmp/leaks --part split
    python benchmarks/sample_leaks.py --out /tmp/leaks --part audit --epochs 10

Writes ``OUT/sample_leaks_<part>.json`` (atomically) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if sys.path[:1] != [str(REPO)]:  # first, so this repository's tests/ wins over any installed "tests" package
    sys.path.insert(0, str(REPO))


def make_data(out: Path, *, n_train: int, n_test: int, k: int, size: int, preset: str, seed: int) -> Path:
    """The synthetic dataset with samples (reused when it is already there)."""
    from hpa_zoo.data.synthetic import write_synthetic_dataset

    data = out / f"data_k{k}_{size}px_{preset}_s{seed}_{n_train}_{n_test}"
    if not (data / "train.csv").is_file():
        write_synthetic_dataset(data, n_train=n_train, n_test=n_test, size=size, seed=seed, preset=preset,
                                fields_per_sample=k, workers=2, progress=True)
    return data


def split_leak(data: Path, *, n_splits: int = 5, seed: int = 0) -> dict:
    """Validation macro F1 of the two cheap models under an image-level and a sample-level split."""
    import pandas as pd

    from hpa_zoo.train.baselines import PixelStatsBaseline, pixel_features
    from hpa_zoo.data.folds import make_folds
    from hpa_zoo.data.images import load_rgby
    from hpa_zoo.data.labels import multi_hot_matrix, read_labels_csv
    from hpa_zoo.nn.metrics import macro_f1

    table = read_labels_csv(data / "train.csv")
    samples = pd.read_csv(data / "train.csv", dtype=str)["Sample"].to_numpy()
    images = np.stack([load_rgby(data / "train", i) for i in table["Id"]])
    y = multi_hot_matrix(list(table["labels"]))
    feats = pixel_features(images)
    splits = {"image-level": make_folds(table, n_splits=n_splits, seed=100)["fold"].to_numpy(),
              "sample-level": make_folds(table, n_splits=n_splits, seed=100,
                                         groups=pd.factorize(samples)[0])["fold"].to_numpy()}
    result = {"n_images": len(table), "n_samples": int(len(set(samples))), "n_splits": n_splits, "models": {}}
    for split, fold_of in splits.items():
        shared = [float(np.isin(samples[fold_of == f], samples[fold_of != f]).mean()) for f in range(n_splits)]
        result.setdefault("valid_images_with_a_same_sample_train_image", {})[split] = float(np.mean(shared))
        for name in ("pixel-stats logistic", "pixel-stats 1-NN"):
            scores = []
            for f in range(n_splits):
                tr, va = fold_of != f, fold_of == f
                if name.endswith("logistic"):
                    pred = PixelStatsBaseline().fit(images[tr], y[tr], seed=seed).predict(images[va])
                else:
                    mu, sd = feats[tr].mean(0), feats[tr].std(0) + 1e-9
                    a, b = (feats[va] - mu) / sd, (feats[tr] - mu) / sd
                    d = (a ** 2).sum(1)[:, None] - 2 * a @ b.T + (b ** 2).sum(1)[None]
                    pred = y[tr][d.argmin(1)]
                scores.append(macro_f1(y[va], pred))
            result["models"].setdefault(name, {})[split] = {"mean": float(np.mean(scores)),
                                                           "per_fold": [round(s, 4) for s in scores]}
    for name, by_split in result["models"].items():
        by_split["inflation"] = by_split["image-level"]["mean"] - by_split["sample-level"]["mean"]
    return result


def pixel_stats_recall(data: Path) -> float:
    """Recall@1 of a fourth, trivial signal: the nearest train image by standardised per-channel pixel statistics
    (`hpa_zoo.train.baselines.pixel_features`, Euclidean) is a same-sample image, over the test images that have one."""
    import pandas as pd

    from hpa_zoo.train.baselines import pixel_features
    from hpa_zoo.data.images import load_rgby

    train, test = pd.read_csv(data / "train.csv"), pd.read_csv(data / "test_labels.csv")
    fa = pixel_features(np.stack([load_rgby(data / "test", i) for i in test["Id"]]))
    fb = pixel_features(np.stack([load_rgby(data / "train", i) for i in train["Id"]]))
    mu, sd = fb.mean(0), fb.std(0) + 1e-9
    a, b = (fa - mu) / sd, (fb - mu) / sd
    nearest = ((a ** 2).sum(1)[:, None] - 2 * a @ b.T + (b ** 2).sum(1)[None]).argmin(1)
    has = test["SampleInTrain"].to_numpy() == 1
    return float((train["Sample"].to_numpy()[nearest] == test["Sample"].to_numpy())[has].mean())


def audit_recall(data: Path, out: Path, *, size: int, epochs: int, batch_size: int, lr: float | None,
                 seed: int) -> dict:
    """pHash / random-feature cosine / trained-embedding recall of the planted same-sample pairs (test vs train)."""
    import keras
    import pandas as pd

    from hpa_zoo.analysis.leaks import audit
    from hpa_zoo.train.metric_learning import train_metric_learning

    t0 = time.time()
    trained = train_metric_learning(data, out_dir=out / "arcface", image_size=size, epochs=epochs,
                                    batch_size=batch_size, learning_rate=lr, seed=seed, verbose=2)
    train_s = time.time() - t0
    keras.utils.set_random_seed(seed)
    summary = audit(data / "test", data / "train", out_dir=out / "audit", model="team1_densenet121_512",
                    image_size=size, embedding_model=trained["preset"], a_csv=data / "test_labels.csv",
                    b_csv=data / "train.csv", top=12)
    pairs = pd.read_csv(out / "audit" / "pairs.csv")
    test = pd.read_csv(data / "test_labels.csv")
    with_partner = set(test.loc[test["SampleInTrain"] == 1, "Id"])
    at1 = {}
    for name in summary["signals"]:
        best = pairs[pairs[f"{name}_best"] & pairs["a_id"].isin(with_partner)].drop_duplicates("a_id")
        at1[name] = float(best["same_sample"].sum() / max(len(with_partner), 1))
    at1["pixel_stats_nearest"] = pixel_stats_recall(data)
    return {"train_seconds": round(train_s, 1), "epochs": epochs, "loss_first_last": [
        trained["history"]["loss"][0], trained["history"]["loss"][-1]], "num_train_samples": trained["num_samples"],
        "recall_precision_at_cutoff": summary["recall_precision"], "recall_at_1": at1,
        "test_images": len(test), "test_images_with_a_same_sample_train_image": len(with_partner)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--part", choices=("split", "audit"), required=True)
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-test", type=int, default=120)
    p.add_argument("--fields-per-sample", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--preset", default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10, help="metric-learning epochs (audit)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="metric-learning learning rate (default Team 1's 1e-4)")
    args = p.parse_args(argv)
    from hpa_zoo.atomic import atomic_write_text

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = make_data(args.out, n_train=args.n_train, n_test=args.n_test, k=args.fields_per_sample, size=args.size,
                     preset=args.preset, seed=args.seed)
    if args.part == "split":
        result = split_leak(data, seed=args.seed)
    else:
        result = audit_recall(data, args.out, size=args.size, epochs=args.epochs, batch_size=args.batch_size,
                              lr=args.lr, seed=args.seed)
    result.update({"data": "SYNTHETIC (hpa_zoo.data.synthetic), never an HPA result", "settings": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "seconds": round(time.time() - t0, 1)})
    atomic_write_text(args.out / f"sample_leaks_{args.part}.json", json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
