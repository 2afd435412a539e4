"""CPU inference latency: Keras (TensorFlow backend) against onnxruntime on the same weights (issue P3).

    python benchmarks/cpu_inference.py [--model team1_densenet121_512] [--size 512] [--threads 2] [--repeats 10]

Measures single-image latency (batch 1, median of ``--repeats`` timed calls after warm-up) of

* ``keras``: ``model.predict_on_batch`` (what `hpa_zoo.infer.tta.predict_tta` calls for a Keras model);
* ``onnxruntime``: the ONNX file `hpa_zoo.infer.export.export_onnx` writes from the same model, run by
  `hpa_zoo.infer.onnx_runtime.OnnxModel` (what ``hpa-zoo predict --runtime onnx`` uses), with ``--threads`` intra-op
  threads;

alternating the two per repeat so that a busy machine slows both alike, and prints both, their ratio and the max
|logit difference|. Random weights (the timing does not depend on them). TensorFlow's own thread pools are set to
``--threads`` too.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="team1_densenet121_512")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    except RuntimeError:  # TensorFlow already started in this process (e.g. under pytest)
        print("note: TensorFlow's thread pools were already initialised; --threads applies to onnxruntime only")
    import hpa_zoo
    from hpa_zoo.infer.onnx_runtime import OnnxModel

    model = hpa_zoo.load(args.model, input_shape=(args.size, args.size, 4))
    x = np.random.default_rng(0).uniform(0, 255, (1, args.size, args.size, 4)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        onnx_model = OnnxModel.from_keras(model, Path(tmp) / "model.onnx", threads=args.threads)
        export_s = time.perf_counter() - t
        for _ in range(2):  # warm-up (graph tracing, ORT arena)
            model.predict_on_batch(x)
            onnx_model.predict_on_batch(x)
        keras_ms, ort_ms = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            a = model.predict_on_batch(x)
            keras_ms.append(1e3 * (time.perf_counter() - t))
            t = time.perf_counter()
            b = onnx_model.predict_on_batch(x)
            ort_ms.append(1e3 * (time.perf_counter() - t))
    k, o = statistics.median(keras_ms), statistics.median(ort_ms)
    diff = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    print(f"{args.model} @ {args.size}px, batch 1, {args.threads} threads, median of {args.repeats}:")
    print(f"  keras predict_on_batch : {k:8.1f} ms")
    print(f"  onnxruntime            : {o:8.1f} ms   (export + session {export_s:.1f} s, once per model)")
    print(f"  keras / onnxruntime    : {k / o:8.2f}x   max |logit diff| {diff:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
