#!/usr/bin/env bash
# The GPU check behind the README's H100 figures: Team 1's full training step (augmentation + DenseNet121-large +
# focal/Lovász/hard-negative loss + Adam), Keras 3 on JAX vs the plain PyTorch reference, same device, bf16.
# Measured 2026-11-27 on an H100 (figures in benchmarks/README.md). Run on a machine with JAX + PyTorch + the Keras wheels on PYTHONPATH (see ../shared/tools/device-wheels):
#   KERAS_BACKEND=jax bash benchmarks/gpu_run.sh OUT_DIR
set -uo pipefail
out=${1:-.}
export PYTHONUNBUFFERED=1 KERAS_BACKEND=${KERAS_BACKEND:-jax}
nvidia-smi -L
python3 -c "import jax, keras, torch; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__, 'torch', torch.__version__)"
# (train_throughput.py sets XLA_PYTHON_CLIENT_PREALLOCATE=false with --reference torch: both share the GPU.)
bench() { local name=$1; shift; timeout 280 python3 benchmarks/train_throughput.py "$@" 2>&1 | grep -v "^W0000\|^I0000" | tee "$out/$name.txt"; }
# Team 1's final model: 1536-px images, 1024-px random-scale crops, large variant, batch 36 (teams.md §1).
bench team1_large_1024_b36 --size 1024 --batch 36 --precision mixed_bfloat16 --steps 6 --warmup 2 --reference torch
# The plain DenseNet121@1024 batch 16 figure the brief quotes.
bench densenet121_1024_b16 --size 1024 --batch 16 --no-large --precision mixed_bfloat16 --steps 15 --warmup 3 --reference torch
# Team 1's TTA (8 dihedral x (whole + 3 crops), max) inference throughput.
bench team1_tta_1024 --size 1024 --batch 36 --precision mixed_bfloat16 --steps 2 --warmup 1 --tta
