"""Bounded memory and time at scale (issue 14): prints the figures, exits 1 if a bound is broken.

1. **predict with TTA** over N synthetic 64-px images (default 20,000) in a Kaggle-layout test folder: the loop of
   `hpa_zoo.infer.predict.predict_probabilities` (`predict._test_source` -> `pipeline.folder_dataset` stream ->
   `tta.predict_tta`, d4 = 8 views, mean) on a small RGBY CNN, chunk by chunk; resident memory (RSS) after the
   first 1,000 images vs after the last. Bound: growth < 300 MB.
2. **embed** over the same stream (`hpa_zoo.infer.explain.embed` per chunk of the folder dataset), same bound.
3. **evaluate** (`hpa_zoo.nn.metrics.evaluate_csv`, what `hpa-zoo evaluate` runs) on an M-row submission against an
   M-row label CSV (default 1,000,000). Bound: < 30 s.

The images are random-texture PNGs written with OpenCV (fast to make; the memory behaviour of the reader and
the model does not depend on the pixel values). The model is built here (2 convolutions + a feature layer),
small enough that the figures measure hpa-zoo's streaming, not a network's size.

    python benchmarks/load_checks.py                      # the full sizes (minutes on 2 CPU cores)
    python benchmarks/load_checks.py --images 2000 --rows 100000 --work /tmp/lc   # quick
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

MB = 1e6
RSS_BOUND_MB = 300.0
EVALUATE_BOUND_S = 30.0
SIZE = 64
CHUNK = 1000


def rss_mb() -> float:
    """Resident set size of this process in MB (psutil)."""
    import psutil

    return psutil.Process().memory_info().rss / MB


def write_test_folder(folder: Path, n: int, size: int = SIZE, seed: int = 0) -> Path:
    """A Kaggle-layout test folder: ``test/{id}_{stain}.png`` (size x size uint8) and ``sample_submission.csv``."""
    import cv2
    import pandas as pd

    (folder / "test").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"img{k:06d}" for k in range(n)]
    base = rng.integers(0, 255, (8, size, size), dtype=np.uint8)
    for k, image_id in enumerate(ids):
        for c, stain in enumerate(("red", "green", "blue", "yellow")):
            cv2.imwrite(str(folder / "test" / f"{image_id}_{stain}.png"), np.roll(base[(k + c) % 8], k, axis=0))
    pd.DataFrame({"Id": ids, "Predicted": "0"}).to_csv(folder / "sample_submission.csv", index=False)
    return folder


def small_model(num_classes: int = 28, size: int = SIZE):
    """(B, S, S, 4) in [0, 255] -> logits (B, 28); layer ``features`` is the embedding (64-d)."""
    import keras

    inputs = keras.Input((size, size, 4))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(64, activation="relu", name="features")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x))


def _growth(samples: list[tuple[int, float]], first: int) -> dict:
    """RSS after the first `first` images vs after the last chunk."""
    at_first = next(r for n, r in samples if n >= first)
    end = samples[-1][1]
    return {"images": samples[-1][0], "rss_after_first_mb": round(at_first, 1), "rss_at_end_mb": round(end, 1),
            "growth_mb": round(end - at_first, 1), "peak_mb": round(max(r for _, r in samples), 1)}


def predict_memory(folder: Path, *, first: int = CHUNK, chunk: int = CHUNK, batch_size: int = 32) -> dict:
    """Check 1: stream the test folder through `predict_tta` (d4) chunk by chunk; RSS figures and images/s."""
    from hpa_zoo.infer.predict import _test_source
    from hpa_zoo.recipe import TTAConfig
    from hpa_zoo.infer.tta import predict_tta

    model = small_model()
    ids, ds = _test_source(folder, data_dir=None, image_size=SIZE)
    samples, n, start = [], 0, time.perf_counter()
    for batch in ds.batch(chunk).as_numpy_iterator():
        probs = predict_tta(model, batch["image"], config=TTAConfig("d4"), image_size=SIZE, input_size=SIZE,
                            batch_size=batch_size)
        assert probs.shape == (len(batch["id"]), 28)
        n += len(batch["id"])
        samples.append((n, rss_mb()))
    took = time.perf_counter() - start
    return {**_growth(samples, first), "seconds": round(took, 1), "images_per_s": round(n / took, 1),
            "tta": "d4 (8 views)"}


def embed_memory(folder: Path, *, first: int = CHUNK, chunk: int = CHUNK, batch_size: int = 64) -> dict:
    """Check 2: `explain.embed` over the same folder stream, chunk by chunk; RSS figures."""
    from hpa_zoo.infer.explain import embed
    from hpa_zoo.infer.predict import _test_source

    model = small_model()
    _, ds = _test_source(folder, data_dir=None, image_size=SIZE)
    samples, n, feats, start = [], 0, 0, time.perf_counter()
    for batch in ds.batch(chunk).as_numpy_iterator():
        f = embed(model, batch["image"], layer="features", batch_size=batch_size)
        feats += f.shape[0]
        n += len(batch["id"])
        samples.append((n, rss_mb()))
    took = time.perf_counter() - start
    return {**_growth(samples, first), "features": feats, "seconds": round(took, 1), "images_per_s": round(n / took, 1)}


def evaluate_time(work: Path, rows: int, seed: int = 0) -> dict:
    """Check 3: `metrics.evaluate_csv` on a `rows`-row submission; seconds (writing the CSVs is not timed)."""
    import pandas as pd

    from hpa_zoo.nn.metrics import evaluate_csv

    rng = np.random.default_rng(seed)
    ids = [f"{k:08x}-bbc3-11e8-b2bc-ac1f6b6435d0" for k in range(rows)]

    def targets():
        a, b = rng.integers(0, 28, rows), rng.integers(0, 28, rows)
        return [f"{x} {y}" if x != y else f"{x}" for x, y in zip(a.tolist(), b.tolist())]

    pred, truth = work / "submission.csv", work / "labels.csv"
    pd.DataFrame({"Id": ids, "Predicted": targets()}).to_csv(pred, index=False)
    pd.DataFrame({"Id": ids, "Target": targets()}).to_csv(truth, index=False)
    start = time.perf_counter()
    report = evaluate_csv(pred, truth)
    took = time.perf_counter() - start
    return {"rows": rows, "seconds": round(took, 2), "macro_f1": round(float(report["macro_f1"]), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000, help="test images for checks 1-2 (default 20000)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="submission rows for check 3 (default 1e6)")
    parser.add_argument("--work", default=None, help="scratch folder (default a temporary one)")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads (0 = TF's default)")
    args = parser.parse_args(argv)
    if args.images < 2 * CHUNK or args.rows < 1:
        parser.error(f"--images must be >= {2 * CHUNK} (first {CHUNK} vs the last) and --rows >= 1")
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="hpa_load_"))
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "kaggle_test"
    if not (folder / "sample_submission.csv").is_file():
        t = time.perf_counter()
        write_test_folder(folder, args.images)
        print(f"wrote {args.images} test images ({SIZE} px) in {time.perf_counter() - t:.0f}s", flush=True)
    results = {"predict_tta": predict_memory(folder), "embed": embed_memory(folder),
               "evaluate": evaluate_time(work, args.rows)}
    ok = {"predict_tta": results["predict_tta"]["growth_mb"] < RSS_BOUND_MB,
          "embed": results["embed"]["growth_mb"] < RSS_BOUND_MB,
          "evaluate": results["evaluate"]["seconds"] < EVALUATE_BOUND_S}
    for name, res in results.items():
        print(f"{name:12s} {'ok  ' if ok[name] else 'FAIL'} {json.dumps(res)}", flush=True)
    print(json.dumps({"results": results, "passed": all(ok.values())}))
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
