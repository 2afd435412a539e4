#!/usr/bin/env bash
# Issue #15's device check in one call: P1 (Team 1's training step like for like against the plain PyTorch
# reference, in model and full mode, with TFLOP/s and peak memory) and Team 1's TTA inference, on one GPU with
# Keras 3 on JAX (the device machine has JAX and PyTorch but no TensorFlow).
#
# Prepare here (once per session; both folders are git-ignored and travel with `carry`):
#   bash ../shared/tools/device-wheels                        # -> .whl/ (Keras and the two wheels it lacks there)
#   mkdir -p .device && cp ../shared/bench/torch_team1_reference.py .device/
# Run there (carry .whl and .device):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site && bash benchmarks/gpu_run.sh "$OUT"
# Smoke test on a CPU at tiny sizes (what tests/test_benchmarks.py runs): GPU_RUN_TINY=1 bash benchmarks/gpu_run.sh DIR
#
# Writes DIR/<case>.txt (each run's JSON line and table) and DIR/summary.txt; the summary is printed last.
set -uo pipefail
out=${1:-.}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 KERAS_BACKEND=${KERAS_BACKEND:-jax}
py=${PYTHON:-python3}
if [[ -n "${GPU_RUN_TINY:-}" ]]; then
  shape=(--size 64 --batch 2 --precision mixed_bfloat16); steps=(--steps 1 --warmup 1 --threads 1); limits=(900 900)
else  # Team 1's final model: 1536 px images, 1024 px crops, DenseNet121-large, batch 36, bf16 (teams.md §1)
  nvidia-smi -L
  # The two runs stay inside the device tool's 600 s a command (each: reference ~45 s, XLA compile ~1-2 min).
  shape=(--size 1024 --batch 36 --precision mixed_bfloat16); steps=(--steps 12 --warmup 3); limits=(320 250)
fi
"$py" -c "import keras, numpy; print('keras', keras.__version__, 'backend', keras.backend.backend(), 'numpy', numpy.__version__)"
bench() {  # bench NAME LIMIT_S ARGS...: one train_throughput.py run, its output kept in $out/NAME.txt
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$py" benchmarks/train_throughput.py "${shape[@]}" "${steps[@]}" "$@" 2>&1 \
    | grep -v "^W0000\|^I0000\|^WARNING: All log" | tee "$out/$name.txt"
}
# P1 model mode: the batch on the device at 1024, one D4 per batch: exactly the plain reference's work. The
# reference runs first in its own process on the same GPU; TTA inference (8 dihedral x (whole + 3 crops)) after.
bench p1_model "${limits[0]}" --mode model --reference shared --tta
# P1 full mode: uint8 batches at 1536 from host memory, crop + resize + D4 per image in the step (what
# `hpa-zoo train --augment-on device` runs); the reference again (its second measurement: the spread).
bench p1_full "${limits[1]}" --mode full --reference shared
"$py" - "$out" <<'EOF' | tee "$out/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
goals = {"model": 1.5, "full": 1.3}
print("P1 (goals: model >= 1.5x, full >= 1.3x the plain reference; peak memory <= the reference's)")
for case in ("p1_model", "p1_full"):
    path = out / f"{case}.txt"
    lines = [l for l in path.read_text().splitlines() if l.startswith("{")] if path.exists() else []
    if not lines:
        print(f"{case}: no result (see {path.name})")
        continue
    r = json.loads(lines[0])
    ratio, goal = r["keras_over_reference"], goals[r["mode"]]
    gb = lambda v: "n/a" if v is None else f"{v:.1f} GB"
    print(f"{case}: keras {r['train_images_per_s']:.1f} img/s ({r['train_tflops']:.0f} TFLOP/s, "
          f"{100 * r['train_bf16_peak_share']:.1f} % of {r['peak_tflops']:.0f}; peak {gb(r['peak_gb'])}) | "
          f"reference {r['reference_images_per_s']:.1f} img/s (peak {gb(r['reference_peak_gb'])}) | "
          f"{ratio:.2f}x, goal {goal}x {'met' if ratio >= goal else 'NOT met'}"
          + ("" if r["reference_like_for_like"] else " (not like for like)"))
    if "tta_images_per_s" in r:
        print(f"{case}: TTA inference {r['tta_images_per_s']:.1f} img/s ({r['tta_views_per_image']} views each)")
EOF
