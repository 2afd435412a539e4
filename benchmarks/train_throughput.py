"""Training (and TTA inference) throughput of Team 1's full step, on in-memory arrays, on any Keras backend.

The timed training step is the whole Team 1 recipe (teams.md §1): uint8 RGBY images at ``image_size`` ->
random-scale square crop (side ~ U(size, image_size), resized to ``size``) -> one of the 8 dihedral transforms
(per example) -> DenseNet121(-large) + dropout head -> BestfittingLoss (focal + symmetric Lovász + hard-negative
BCE) -> Adam (clipnorm 1, step schedule). The augmentation is the library's keras.ops layer
(`hpa_zoo.augment.device.RandomScaleCropD4`: ``keras.ops.image.affine_transform`` + ``d4_apply``, what
``hpa-zoo train --augment-on device`` trains with), so the benchmark runs with ``KERAS_BACKEND=jax`` or ``torch``
and no TensorFlow installed: nothing imported here imports TensorFlow.

Two modes (issue P1):

* ``--mode full`` (default): the step above, fed uint8 batches at ``image_size`` from host memory each step;
* ``--mode model``: the batch is already on the device at the crop size (float32 in [0, 255]) and gets one D4 for the
  whole batch (`BatchD4`): network + loss + optimizer only, exactly the work of the plain PyTorch reference
  ``../shared/bench/torch_team1_reference.py``.

``--reference torch`` runs the project's own PyTorch rewrite of the full step (eager; AMP on CUDA) with the
reference network `tests/torch_refs/bestfitting_densenet.py` on the same device, and prints keras/torch.
``--reference shared`` runs the plain PyTorch reference script (``--reference-script``; it always trains
DenseNet121-large under bf16 autocast on a device-resident batch) in a child process *before* this process starts
its own backend, on the same GPU, and prints keras/reference with both peak memories (P4). The figures include
TFLOP/s and the share of the bf16 peak (``--peak-tflops``), counting `GFLOP_PER_TRAIN_IMAGE_1024` per training
image at 1024 px (scaled by the pixel count at other sizes).
``--tta`` adds inference images/s with Team 1's TTA (8 dihedral x (whole image + 3 random crops), max).

    KERAS_BACKEND=jax python benchmarks/train_throughput.py --size 512 --batch 16 --precision mixed_bfloat16 \
        --reference torch --tta

Output: one JSON line (the first line starting with ``{``), then a human-readable table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if sys.path[:1] != [str(REPO_ROOT)]:  # run as a script: this repository first (its tests/ over any installed "tests")
    sys.path.insert(0, str(REPO_ROOT))

#: teams.md §1.1: the final model loads 1536 px and crops 1024 px, i.e. image_size = 1.5 x the input size.
IMAGE_OVER_INPUT = 1.5
#: teams.md §1.5: Adam, lr 3e-4 for the first epochs, gradient norm clipped at 1.
LR, CLIPNORM = 3e-4, 1.0
NUM_CLASSES = 28
#: Issue P1's count of the arithmetic in one training image of DenseNet121-large at 1024 px (forward + backward).
GFLOP_PER_TRAIN_IMAGE_1024 = 105.0
#: Dense bf16 matrix peak of an H100/H200 SXM by the datasheet, TFLOP/s (a plain 8192^3 bf16 matmul measured
#: 769-798 on this workplace's H200s).
H200_BF16_PEAK_TFLOPS = 989.0
#: Where the device run finds the plain PyTorch reference (copied there, an ignored folder, by benchmarks/gpu_run.sh's
#: caller), else the shared copy beside the repository.
REFERENCE_SCRIPTS = (REPO_ROOT / ".device" / "torch_team1_reference.py",
                     REPO_ROOT.parent / "shared" / "bench" / "torch_team1_reference.py")


# ------------------------------------------------------------------------------------------------ keras
def build_keras_trainer(size: int, image_size: int, large: bool, seed: int = 0):
    """Team 1's network wrapped with the library's training augmentation (`hpa_zoo.augment.device`, what
    ``hpa-zoo train --augment-on device`` compiles): `RandomScaleCropD4` drawing its random numbers on the device
    (``seed``), active only when ``training=True``.

    Returns:
        (trainer keras.Model: uint8 (B, image_size, image_size, 4) -> logits (B, 28) float32, the bare network).
    """
    from hpa_zoo.augment.device import DeviceAugmented, RandomScaleCropD4
    from zoo_models.teams.team1_bestfitting import build_densenet121

    net = build_densenet121(NUM_CLASSES, (size, size, 4), weights=None, large=large)
    return DeviceAugmented(RandomScaleCropD4(size, seed=seed), net, name="team1_augmented"), net


def make_batch_d4(seed: int = 0):
    """`BatchD4` (a Keras layer): one dihedral transform drawn on the device per step, the same for the whole batch,
    as the plain reference's ``d4``; active only when ``training=True``. Call: (B, S, S, C) -> (B, S, S, C)."""
    import keras
    from keras import ops

    from hpa_zoo.augment.device import random_d4

    class BatchD4(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(dtype="float32", **kwargs)
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, x, training=False):
            if not training:
                return x
            coins = keras.random.uniform((1, 3), seed=self.seed_generator)
            return random_d4(x, ops.broadcast_to(coins, (ops.shape(x)[0], 3)))

    return BatchD4(name="batch_d4")


def build_keras_model_mode(size: int, large: bool, seed: int = 0):
    """``--mode model``: Team 1's network behind `make_batch_d4` (no crop, no resize: the batch is at ``size``).

    Returns:
        (trainer keras.Model: float32 (B, size, size, 4) in [0, 255] -> logits (B, 28) float32, the bare network).
    """
    from hpa_zoo.augment.device import DeviceAugmented
    from zoo_models.teams.team1_bestfitting import build_densenet121

    net = build_densenet121(NUM_CLASSES, (size, size, 4), weights=None, large=large)
    return DeviceAugmented(make_batch_d4(seed), net, name="team1_batch_d4"), net


def device_peak_gb() -> float | None:
    """Peak device memory this process's Keras backend allocated, GiB (None on a CPU or when not reported)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.local_devices()[0]
        stats = device.memory_stats() if device.platform != "cpu" else None
        return stats["peak_bytes_in_use"] / 2 ** 30 if stats and "peak_bytes_in_use" in stats else None
    if backend == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None
    import tensorflow as tf

    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 30 \
        if tf.config.list_physical_devices("GPU") else None


def train_tflops(images_per_s: float, size: int) -> float:
    """Training arithmetic rate, TFLOP/s, at `GFLOP_PER_TRAIN_IMAGE_1024` per image scaled by (size / 1024)^2."""
    return images_per_s * GFLOP_PER_TRAIN_IMAGE_1024 * (size / 1024) ** 2 / 1000


def xla_train_gflop_per_image(size: int, large: bool, batch: int = 2) -> float:
    """XLA's own count of one training image's arithmetic (JAX backend): the compiled cost analysis of the forward
    pass + the gradient of `BestfittingLoss` for Team 1's network at ``size``, in GFLOP per image (the optimizer
    update, a few FLOP per weight, is left out). Checks `GFLOP_PER_TRAIN_IMAGE_1024` without a GPU: run it at a
    small ``size`` and scale by the pixel count."""
    import jax
    import keras

    from hpa_zoo.nn.losses import BestfittingLoss
    from zoo_models.teams.team1_bestfitting import build_densenet121

    if keras.backend.backend() != "jax":
        raise SystemExit("--xla-flops needs KERAS_BACKEND=jax")
    net = build_densenet121(NUM_CLASSES, (size, size, 4), weights=None, large=large)
    loss = BestfittingLoss()
    trainable = [v.value for v in net.trainable_variables]
    frozen = [v.value for v in net.non_trainable_variables]

    def loss_of(trainable, frozen, x, y):
        logits, _ = net.stateless_call(trainable, frozen, x, training=True)
        return loss(y, logits)

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 4)).astype(np.float32)
    y = (rng.random((batch, NUM_CLASSES)) < 0.1).astype(np.float32)
    cost = jax.jit(jax.grad(loss_of)).lower(trainable, frozen, x, y).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) / batch / 1e9


def keras_device() -> str:
    """The accelerator Keras uses, in words (e.g. ``"gpu (jax)"``)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return f"{jax.devices()[0].platform} (jax)"
    if backend == "torch":
        import torch

        return f"{'cuda' if torch.cuda.is_available() else 'cpu'} (torch)"
    import tensorflow as tf

    return f"{'gpu' if tf.config.list_physical_devices('GPU') else 'cpu'} (tensorflow)"


def bench_keras(args, batches, labels) -> dict:
    """Time ``args.steps`` Keras training steps after ``args.warmup``; optionally TTA inference."""
    import keras

    from hpa_zoo.nn.losses import BestfittingLoss
    from zoo_models.teams.team1_bestfitting import make_optimizer

    if args.precision != "float32":
        keras.mixed_precision.set_dtype_policy(args.precision)
    keras.utils.set_random_seed(args.seed)
    host_images = batches[0]  # uint8 at image_size: what TTA inference reads in either mode
    if args.mode == "model":  # the batch on the device at the crop size, as the plain reference has it
        trainer, net = build_keras_model_mode(args.size, args.large, args.seed)
        batches = [keras.ops.convert_to_tensor(x) for x in model_mode_batches(batches, args.size)]
        labels = [keras.ops.convert_to_tensor(y) for y in labels]
    else:
        trainer, net = build_keras_trainer(args.size, args.image_size, args.large, args.seed)
    jit = {"auto": "auto", "on": True, "off": False}[args.jit_compile]
    trainer.compile(optimizer=make_optimizer(steps_per_epoch=1000, epochs=45), loss=BestfittingLoss(),
                    jit_compile=False if args.run_eagerly else jit, run_eagerly=args.run_eagerly)
    times = []
    for step in range(args.warmup + args.steps):
        x, y = batches[step % len(batches)], labels[step % len(labels)]
        t = time.perf_counter()
        loss = trainer.train_on_batch(x, y)
        float(np.asarray(loss if np.ndim(loss) == 0 else loss[0]))  # the result is on the host: step finished
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
    rate = args.batch * len(times) / sum(times)
    out = {"train_images_per_s": rate, "train_step_ms_median": 1000 * statistics.median(times),
           "final_loss": float(np.asarray(loss)), "train_tflops": train_tflops(rate, args.size),
           "peak_gb": device_peak_gb()}
    out["train_bf16_peak_share"] = out["train_tflops"] / args.peak_tflops
    if args.tta:
        out.update(bench_tta(args, net, host_images))
    return out


def model_mode_batches(batches: list[np.ndarray], size: int) -> list[np.ndarray]:
    """``--mode model`` inputs: each uint8 (B, image_size, image_size, 4) batch's top-left ``size`` square as
    float32 in [0, 255], (B, size, size, 4)."""
    return [np.ascontiguousarray(b[:, :size, :size]).astype(np.float32) for b in batches]


def bench_shared_reference(args) -> dict:
    """Run the plain PyTorch reference (``args.reference_script``: ``SIZE BATCH STEPS recipe`` -> one JSON line) in a
    child process and return its figures, or raise SystemExit naming the script and its output."""
    import subprocess

    script = Path(args.reference_script) if args.reference_script else next(
        (p for p in REFERENCE_SCRIPTS if p.is_file()), None)
    if script is None or not script.is_file():
        raise SystemExit(f"--reference shared: no reference script at {script or ' or '.join(map(str, REFERENCE_SCRIPTS))}"
                         f"; copy ../shared/bench/torch_team1_reference.py there or pass --reference-script PATH")
    cmd = [sys.executable, str(script), str(args.size), str(args.batch), str(args.steps), "recipe"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.reference_timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"--reference shared: {' '.join(cmd)} exited {proc.returncode} without its JSON line:\n"
                         f"{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    ref = json.loads(lines[-1])
    rate = float(ref["img_s"])
    return {"reference_images_per_s": rate, "reference_peak_gb": ref.get("peak_gb"),
            "reference_final_loss": ref.get("loss"), "reference_script": str(script),
            "reference_tflops": train_tflops(rate, args.size)}


def bench_tta(args, net, images) -> dict:
    """Inference images/s with Team 1's TTA (`hpa_zoo.infer.tta.predict_tta`), first call excluded."""
    from hpa_zoo.recipe import TTAConfig
    from hpa_zoo.infer.tta import predict_tta

    cfg = TTAConfig("d4", n_random_crops=3, aggregate="max")  # teams.md §1.6: seeds 0..3 x 8 dihedral, max
    kw = dict(config=cfg, image_size=args.image_size, input_size=args.size, batch_size=args.batch)
    predict_tta(net, images, **kw)  # compile / warm up at the timed shapes
    t = time.perf_counter()
    probs = predict_tta(net, images, **kw)
    dt = time.perf_counter() - t
    return {"tta_images_per_s": len(images) / dt, "tta_views_per_image": 8 * (1 + cfg.n_random_crops),
            "tta_probs_finite": bool(np.isfinite(probs).all())}


# ------------------------------------------------------------------------------------------------ torch
def torch_bestfitting_loss(logits, target):
    """Team 1's loss written plainly in PyTorch (teams.md §1.3), independent of hpa_zoo.nn.losses.

    0.5 * focal (gamma 2, summed over classes, mean over batch) + 0.5 * symmetric Lovász hinge (per class over the
    batch, mean over classes) + 0.5 * hard-negative BCE (all positives + top-k negatives per class).
    """
    import torch
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    focal = (bce * torch.exp(2.0 * F.logsigmoid(-logits * (2 * target - 1)))).sum(1).mean()

    def lovasz(z, y):  # z, y: (B,) one class
        errors = 1.0 - z * (2 * y - 1)
        errors_sorted, order = torch.sort(errors, descending=True)
        gt = y[order]
        inter = gt.sum() - gt.cumsum(0)
        union = gt.sum() + (1 - gt).cumsum(0)
        jaccard = 1.0 - inter / union
        grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        return torch.dot(F.relu(errors_sorted), grad)

    lov, hard = [], []
    for c in range(logits.shape[1]):
        z, y = logits[:, c], target[:, c]
        lov.append((lovasz(z, y) + lovasz(-z, 1 - y)) / 2)
        pos, neg = y > 0.5, y <= 0.5
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        k = min(n_neg, n_pos + max(2, int(0.5 * n_neg)), int(0.7 * n_neg) + 2)
        idx = torch.cat([pos.nonzero()[:, 0], neg.nonzero()[:, 0][torch.argsort(z[neg], descending=True)[:k]]])
        hard.append(F.binary_cross_entropy_with_logits(z[idx], y[idx]))
    return 0.5 * focal + 0.5 * torch.stack(lov).mean() + 0.5 * torch.stack(hard).mean()


def bench_torch(args, batches, labels) -> dict:
    """The same step in eager PyTorch: per-example crop+resize and D4 on the device, AMP (CUDA) if asked."""
    import torch
    import torch.nn.functional as F

    from tests.torch_refs.bestfitting_densenet import build_torch_bestfitting_densenet

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_torch_bestfitting_densenet(NUM_CLASSES, large=args.large).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    amp_dtype = {"mixed_float16": torch.float16, "mixed_bfloat16": torch.bfloat16}.get(args.precision)
    use_amp = amp_dtype is not None and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype is torch.float16)
    gen = torch.Generator().manual_seed(args.seed)

    def augment(x_uint8):
        x = x_uint8.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0  # [0, 1] as bestfitting
        crops = []
        for img in x:
            s = int(torch.randint(args.size, args.image_size + 1, (1,), generator=gen))
            oy, ox = (int(torch.randint(0, args.image_size - s + 1, (1,), generator=gen)) for _ in range(2))
            crop = F.interpolate(img[None, :, oy:oy + s, ox:ox + s], size=(args.size, args.size),
                                 mode="bilinear", align_corners=False)[0]
            k = int(torch.randint(0, 8, (1,), generator=gen))
            if k & 1:
                crop = crop.flip(1)
            if k & 2:
                crop = crop.flip(2)
            if k & 4:
                crop = crop.transpose(1, 2)
            crops.append(crop)
        return torch.stack(crops)

    times = []
    for step in range(args.warmup + args.steps):
        x = torch.from_numpy(batches[step % len(batches)])
        y = torch.from_numpy(labels[step % len(labels)]).to(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
            logits, _ = model(augment(x))
        loss = torch_bestfitting_loss(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIPNORM)
        scaler.step(opt)
        scaler.update()
        loss_value = float(loss.detach())  # synchronises
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
    return {"torch_train_images_per_s": args.batch * len(times) / sum(times),
            "torch_train_step_ms_median": 1000 * statistics.median(times), "torch_final_loss": loss_value,
            "torch_device": device.type, "torch_amp": use_amp}


# ------------------------------------------------------------------------------------------------ main
def make_data(args) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A few in-memory batches: uint8 (B, image_size, image_size, 4) images and float32 (B, 28) multi-hot."""
    rng = np.random.default_rng(args.seed)
    n = min(4, args.warmup + args.steps)
    images = [rng.integers(0, 256, (args.batch, args.image_size, args.image_size, 4), dtype=np.uint8)
              for _ in range(n)]
    labels = []
    for _ in range(n):
        y = (rng.random((args.batch, NUM_CLASSES)) < 0.06).astype(np.float32)
        y[np.arange(args.batch), rng.integers(0, NUM_CLASSES, args.batch)] = 1.0  # >= 1 label per image
        labels.append(y)
    return images, labels


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="network input side (the crop); Team 1 final: 1024")
    p.add_argument("--image-size", type=int, default=None, help="loaded image side (default 1.5 x --size)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (compilation)")
    p.add_argument("--precision", choices=["float32", "mixed_float16", "mixed_bfloat16"], default="float32")
    p.add_argument("--jit-compile", choices=["auto", "on", "off"], default="auto",
                   help="Keras compile(jit_compile=...); JAX always compiles")
    p.add_argument("--run-eagerly", action="store_true",
                   help="Keras without tf.function/jit (quick smoke runs: no minutes-long DenseNet graph build on "
                        "CPU; its timings are not representative)")
    p.add_argument("--no-large", dest="large", action="store_false",
                   help="plain DenseNet121 (the 512 model) instead of DenseNet121-large (the final 1024 model)")
    p.add_argument("--mode", choices=["full", "model"], default="full",
                   help="full: uint8 host batches at image_size, crop + D4 per example in the step; model: the batch "
                        "on the device at the crop size, one D4 per batch (the plain reference's work)")
    p.add_argument("--reference", choices=["none", "torch", "shared"], default="none",
                   help="torch: the project's PyTorch rewrite of the full step; shared: the plain PyTorch reference "
                        "script in a child process (DenseNet121-large, bf16 autocast, batch on the device)")
    p.add_argument("--reference-script", default=None,
                   help=f"the plain reference for --reference shared (default: the first of "
                        f"{', '.join(str(p.relative_to(REPO_ROOT.parent)) for p in REFERENCE_SCRIPTS)} that exists)")
    p.add_argument("--reference-timeout", type=float, default=600.0, help="seconds for the --reference shared run")
    p.add_argument("--xla-flops", action="store_true",
                   help="only print XLA's FLOP count of one training image at --size (JAX; no timing), scaled to "
                        "1024 px, against GFLOP_PER_TRAIN_IMAGE_1024")
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_PEAK_TFLOPS,
                   help="the accelerator's dense bf16 peak, for the share of peak printed")
    p.add_argument("--tta", action="store_true", help="also time TTA inference")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for TensorFlow/PyTorch (default: the libraries' own choice)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.image_size = args.image_size or int(round(args.size * IMAGE_OVER_INPUT))
    if args.image_size < args.size:
        p.error(f"--image-size {args.image_size} < --size {args.size}")
    return args


def main(argv=None) -> dict:
    """Run the benchmark; print one JSON line and a table; return the result dict."""
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.threads:  # read by TensorFlow when it starts; PyTorch is set in `_torch_threads`
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(args.threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = "1"
        _torch_threads(args.threads)
    if args.reference == "torch":
        # Keras-on-JAX and the PyTorch reference share one GPU in this process: by default JAX reserves 75 % of
        # the GPU memory up front and PyTorch then runs out (seen on an H100 at 1024 px, batch 16). Let JAX grow
        # on demand up to 55 %. Must be set before JAX starts.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.55")
    if args.xla_flops:
        gflop = xla_train_gflop_per_image(args.size, args.large, args.batch)
        result = {"benchmark": "xla_flops", "model": "densenet121_large" if args.large else "densenet121",
                  "size": args.size, "xla_train_gflop_per_image": gflop,
                  "scaled_to_1024": gflop * (1024 / args.size) ** 2, "assumed_1024": GFLOP_PER_TRAIN_IMAGE_1024}
        print(json.dumps(result), flush=True)
        print(f"XLA: {gflop:.2f} GFLOP per training image at {args.size} px -> {result['scaled_to_1024']:.1f} at 1024 "
              f"(the TFLOP/s figures assume {GFLOP_PER_TRAIN_IMAGE_1024:g})", flush=True)
        return result
    # The plain reference first, in its own process, before this process's backend takes GPU memory.
    reference = bench_shared_reference(args) if args.reference == "shared" else {}
    import keras

    batches, labels = make_data(args)
    result = {"benchmark": "train_throughput", "backend": keras.backend.backend(), "device": keras_device(),
              "mode": args.mode, "model": "densenet121_large" if args.large else "densenet121", "size": args.size,
              "image_size": args.image_size, "batch": args.batch, "precision": args.precision,
              "jit_compile": args.jit_compile, "run_eagerly": args.run_eagerly, "steps": args.steps, "warmup": args.warmup,
              "host": platform.node(), "cpu_count": os.cpu_count(), "peak_tflops": args.peak_tflops}
    result.update(bench_keras(args, batches, labels))
    if args.reference == "torch":
        result.update(bench_torch(args, batches, labels))
        result["keras_over_torch"] = result["train_images_per_s"] / result["torch_train_images_per_s"]
    if reference:
        result.update(reference)
        result["keras_over_reference"] = result["train_images_per_s"] / reference["reference_images_per_s"]
        result["reference_like_for_like"] = args.large and args.precision == "mixed_bfloat16"
    print(json.dumps(result), flush=True)
    print(format_table(result), flush=True)
    return result


def _torch_threads(n: int) -> None:
    """Limit PyTorch's CPU threads (if PyTorch is installed; it is the Keras backend or the reference)."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(n)


def format_table(r: dict) -> str:
    """The result as a small human-readable table."""
    def gb(value):
        return "n/a" if value is None else f"{value:.1f} GB peak"

    rows = [("setup", f"{r['model']} {r['image_size']}->{r['size']}px, batch {r['batch']}, {r['precision']}, "
                      f"{r['backend']} on {r['device']}, mode {r['mode']}"),
            ("keras train", f"{r['train_images_per_s']:.2f} img/s ({r['train_step_ms_median']:.0f} ms/step, "
                            f"{r['train_tflops']:.3g} TFLOP/s = {100 * r['train_bf16_peak_share']:.3g} % of "
                            f"{r['peak_tflops']:.0f}, {gb(r['peak_gb'])})")]
    if "reference_images_per_s" in r:
        rows += [("plain reference", f"{r['reference_images_per_s']:.2f} img/s ({r['reference_tflops']:.3g} TFLOP/s, "
                                     f"{gb(r['reference_peak_gb'])})"),
                 ("keras / reference", f"{r['keras_over_reference']:.2f}x"
                                       + ("" if r["reference_like_for_like"] else
                                          " (not like for like: the reference is DenseNet121-large in bf16)"))]
    if "torch_train_images_per_s" in r:
        rows += [("torch train", f"{r['torch_train_images_per_s']:.2f} img/s ({r['torch_train_step_ms_median']:.0f}"
                                 f" ms/step, {r['torch_device']}{', AMP' if r['torch_amp'] else ''})"),
                 ("keras / torch", f"{r['keras_over_torch']:.2f}x")]
    if "tta_images_per_s" in r:
        rows.append(("keras TTA infer", f"{r['tta_images_per_s']:.2f} img/s ({r['tta_views_per_image']} views/img)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


if __name__ == "__main__":
    main()
