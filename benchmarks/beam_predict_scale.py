"""The scale figure of ``predict --beam`` (issue 18): throughput and peak memory per worker, Beam vs one process.

1. Writes N synthetic 64-px RGBY fields of view in the Kaggle test layout (`benchmarks/load_checks.write_test_folder`:
   random-texture PNGs; SYNTHETIC, never HPA data) and a preset of a real zoo model at 64 px
   (``team4_gapnet_resnet18_512`` by default, random init: the figure measures the pipeline, not accuracy).
2. **Single process**: `hpa_zoo.infer.predict_images.predict_images` over the folder (the same reader, TTA and model).
3. **Beam**: `hpa_zoo.infer.beam.run_beam` with the in-process multi-worker runner
   (``--runner=FnApiRunner --direct_num_workers=W --direct_running_mode=multi_processing``, W=2 by default).

Memory: a thread samples the resident memory (psutil) of this process and every child process every 0.5 s and keeps
each one's peak; the Beam workers also report their own ``resource.getrusage`` peak through the
``worker_peak_rss_mb`` distribution. Throughput = images / wall time of the whole run (model loading, pipeline
start and output writing included). Prints one JSON line per run.

    python benchmarks/beam_predict_scale.py                      # 20,000 images
    python benchmarks/beam_predict_scale.py --images 2000 --work /tmp/bs
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

MB = 1e6


class PeakMemory:
    """Peak RSS (MB) of this process and of each descendant process, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.5):
        import psutil

        self._me, self._interval = psutil.Process(), interval
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            for proc in [self._me, *self._me.children(recursive=True)]:
                try:
                    rss = proc.memory_info().rss / MB
                except psutil.Error:
                    continue
                self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0.0), rss)
            self._stop.wait(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def make_preset(work: Path, model_name: str, size: int) -> Path:
    import hpa_zoo

    preset = work / "preset"
    if not (preset / "config.json").is_file():
        model = hpa_zoo.load(model_name, input_shape=(size, size, 4))
        hpa_zoo.save_preset(model, preset, model_name=model_name)
    return preset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2, help="Beam worker processes (direct_num_workers)")
    parser.add_argument("--model", default="team4_gapnet_resnet18_512")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", default=None, help="folder for the images and outputs (default: a temp dir)")
    parser.add_argument("--only", choices=["single", "beam"], default=None)
    args = parser.parse_args(argv)

    import tempfile

    from load_checks import SIZE, write_test_folder

    work = Path(args.work or tempfile.mkdtemp(prefix="beam_scale_"))
    folder = work / f"kaggle_{args.images}"
    if not (folder / "sample_submission.csv").is_file():
        t = time.perf_counter()
        write_test_folder(folder, args.images)
        print(f"wrote {args.images} synthetic {SIZE}-px images in {time.perf_counter() - t:.1f} s", flush=True)
    preset = make_preset(work, args.model, SIZE)
    runs = []
    if args.only in (None, "single"):
        from hpa_zoo.infer.predict_images import predict_images

        with PeakMemory() as mem:
            t = time.perf_counter()
            predict_images(str(preset), folder / "test", out_dir=work / "single", batch_size=args.batch_size,
                           verbose=0)
            took = time.perf_counter() - t
        runs.append({"path": "single process (predict_images)", "images": args.images, "seconds": round(took, 1),
                     "images_per_s": round(args.images / took, 1),
                     "peak_rss_mb": round(max(mem.peaks.values()), 1)})
        print(json.dumps(runs[-1]), flush=True)
    if args.only in (None, "beam"):
        from hpa_zoo.infer.beam import run_beam

        flags = ["--runner=FnApiRunner", f"--direct_num_workers={args.workers}",
                 "--direct_running_mode=multi_processing"]
        with PeakMemory() as mem:
            t = time.perf_counter()
            got = run_beam(str(preset), folder, out_dir=work / "beam", beam_options=flags,
                           batch_size=args.batch_size, max_batch_size=args.batch_size)
            took = time.perf_counter() - t
        me = os.getpid()
        workers = sorted((round(v, 1) for pid, v in mem.peaks.items() if pid != me), reverse=True)
        runs.append({"path": f"Beam FnApiRunner, {args.workers} worker processes", "images": args.images,
                     "seconds": round(took, 1), "images_per_s": round(args.images / took, 1),
                     "counters": got["counters"], "worker_peak_rss_mb_getrusage": got["peak_rss_mb"],
                     "launcher_peak_rss_mb": round(mem.peaks.get(me, 0.0), 1),
                     "child_process_peaks_mb_psutil": workers[: max(args.workers, 4)]})
        print(json.dumps(runs[-1]), flush=True)
        if got["counters"]["images_predicted"] != args.images:
            print(f"FAIL: predicted {got['counters']['images_predicted']} of {args.images}", flush=True)
            return 1
    (work / "beam_predict_scale.json").write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
