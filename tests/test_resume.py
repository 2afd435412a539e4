"""Never lose work: `hpa-zoo train` killed with SIGKILL mid-epoch and re-run resumes where it stopped and ends
with the weights of an uninterrupted run; an infinite loss stops the run naming the step and the last good
checkpoint.

The runs are real ``hpa_zoo.cli.main(["train", ...])`` processes (`python -m tests.test_resume train ...`,
see ``_driver`` below) on a synthetic Kaggle-layout folder. The driver only adds what the test needs around
the real command: the tiny CNN + Team 1 recipe row of tests/test_training.py in the registry, a callback that
records progress (epoch, batch) and, when asked, sleeps after each batch so the kill lands mid-epoch.

Measured on CPU with ``--deterministic``: the resumed and the uninterrupted run end bit-identical
(max |Δw| = 0.0); the test allows 1e-6.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests._subprocess import Children, finish, read_json, selected

TINY = "tiny_test_cnn"
EPOCHS, STEPS = 4, 3
TOLERANCE = 1e-6  # measured: 0.0 (bit-identical) on CPU TF 2.21 with --deterministic


# ---------------------------------------------------------------------------------------------- driver
def _driver(argv: list[str]) -> int:
    """`hpa-zoo` main with the tiny test model registered and a progress callback (see the module docstring).

    Env: ``HPA_TEST_SLOW`` seconds slept after each batch from epoch index 1 on; ``HPA_TEST_INF_AT`` an
    optimizer step from which the loss is +inf; ``HPA_TEST_SLOW_MAP`` seconds slept, from epoch index 1 on,
    in a ``tf.numpy_function`` added to the end of the recipe's ``train_map`` (Python map calls are then in flight
    whenever the run stops, as the real OpenCV step of Team 1's map may be).
    """
    import keras

    from hpa_zoo import cli
    from hpa_zoo.train import trainer
    from hpa_zoo import registry
    from tests import test_training

    registry.get_spec("team1_densenet121_512")  # fill the table first
    registry.register(registry.ModelSpec(name=TINY, team="test", builder="tests.test_training:build_tiny",
                                         input_size=test_training.SIZE, recipe="tests.test_training:make_recipe",
                                         classifier="logits"))
    slow = float(os.environ.get("HPA_TEST_SLOW", "0"))
    epoch_now = [0]  # the epoch under way, for the map's sleep

    class Progress(keras.callbacks.Callback):
        def __init__(self, out_dir):
            super().__init__()
            self.path, self.epoch = Path(out_dir) / "progress.json", 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch_now[0] = epoch

        def on_train_batch_end(self, batch, logs=None):
            from hpa_zoo.atomic import atomic_write_text

            atomic_write_text(self.path, json.dumps({"epoch": self.epoch, "batch": batch}))
            if slow and self.epoch >= 1:
                time.sleep(slow)

    make_callbacks = trainer._callbacks

    def callbacks(out_dir, recipe, verbose):
        best, cbs = make_callbacks(out_dir, recipe, verbose)
        return best, [*cbs, Progress(out_dir)]

    trainer._callbacks = callbacks
    if "HPA_TEST_SLOW_MAP" in os.environ:
        import dataclasses

        import tensorflow as tf

        seconds, make = float(os.environ["HPA_TEST_SLOW_MAP"]), test_training.make_recipe

        def sleep(image):
            if epoch_now[0] >= 1:
                time.sleep(seconds)
            return image

        def slow_recipe(*args, **kwargs):
            recipe = make(*args, **kwargs)

            def train_map(example, seed):
                image, target = recipe.train_map(example, seed)
                slowed = tf.numpy_function(sleep, [image], image.dtype, stateful=False)
                return tf.ensure_shape(slowed, image.shape), target

            return dataclasses.replace(recipe, train_map=train_map)

        test_training.make_recipe = slow_recipe
    if "HPA_TEST_INF_AT" in os.environ:
        from hpa_zoo.nn.losses import BestfittingLoss
        from zoo_models.teams.team1_bestfitting import make_optimizer

        at, holder = int(os.environ["HPA_TEST_INF_AT"]), {}

        def optimizer(steps_per_epoch, epochs):
            holder["opt"] = make_optimizer(steps_per_epoch, epochs)
            return holder["opt"]

        class InfFromStep(BestfittingLoss):
            def call(self, y_true, y_pred):
                it = keras.ops.cast(holder["opt"].iterations, "float32")
                return super().call(y_true, y_pred) + keras.ops.where(it >= at, np.inf, 0.0)

        test_training.RECIPE_PATCH.update(make_optimizer=optimizer, make_loss=InfFromStep)
    return cli.main(argv)


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from hpa_zoo.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("resume_data"), n_train=24, n_test=4, size=64,
                                   seed=5, workers=1)


def _command(data, out) -> list[str]:
    """Arguments after ``python`` of one driver run."""
    return ["-m", "tests.test_resume", "train", TINY, "--data", str(data), "--out", str(out),
            "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS), "--seed", "7", "--deterministic"]


@pytest.fixture(scope="module")
def children():
    """Every driver process of this module; those still running at the end are killed."""
    kids = Children()
    yield kids
    kids.close()


@pytest.fixture(scope="module")
def inf_run(data, children, tmp_path_factory):
    """(process, out dir) of the infinite-loss run that `test_infinite_loss_...` checks."""
    out = tmp_path_factory.mktemp("inf") / "inf"
    return children.start(_command(data, out), env={"HPA_TEST_INF_AT": str(STEPS + 1)}), out  # epoch 2, step 2


@pytest.fixture(scope="module")
def reference(data, children, tmp_path_factory):
    """The uninterrupted run both resume tests compare with, started once; call it for its (finished) out dir."""
    out = tmp_path_factory.mktemp("reference") / "reference"
    proc, done = children.start(_command(data, out)), {}

    def finished() -> Path:
        if not done:
            text = finish(proc)
            assert proc.returncode == 0, text[-3000:]
            done["out"] = out
        return done["out"]

    return finished


def _kill_mid_second_epoch(victim, out: Path, signum: int) -> dict | None:
    """Send `signum` to `victim` once the first epoch's backup exists and the second epoch is under way; return
    the progress then (None if the run ended or stalled first)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None:
        backup = read_json(out / "backup" / "training_metadata.json")
        progress = read_json(out / "progress.json")
        # the first epoch's backup exists and the second epoch is under way (slept after its first batch)
        if backup and backup["epoch"] >= 1 and progress and progress["epoch"] >= 1 and progress["batch"] >= 0:
            os.kill(victim.pid, signum)
            return progress
        time.sleep(0.1)
    return None


def _assert_same_weights(out: Path, reference_out: Path) -> None:
    got = _h5_arrays(out / "backup" / "latest.weights.h5")
    want = _h5_arrays(reference_out / "backup" / "latest.weights.h5")
    assert got.keys() == want.keys() and len(got) > 4
    diff = max(float(np.max(np.abs(got[k].astype(np.float64) - want[k]))) if got[k].size else 0.0 for k in got)
    print(f"resume vs uninterrupted: max |dw| = {diff:.3g} over {len(got)} arrays")
    assert diff <= TOLERANCE


@pytest.fixture
def inf_run_alongside(request):
    """Starts `inf_run` now, when its test is selected, so that it runs alongside the SIGKILL test's processes
    (each process is mostly one busy core)."""
    if selected(request, "test_infinite_loss_stops_the_cli_naming_the_step_and_the_last_good_checkpoint"):
        request.getfixturevalue("inf_run")


def _h5_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a Keras ``.weights.h5`` (model and optimizer variables) by its h5 path (h5py, not Keras)."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, np.asarray(obj)) if isinstance(obj, h5py.Dataset)
                     else None)
    return arrays


# ---------------------------------------------------------------------------------------------- tests
def test_sigkill_mid_epoch_then_rerun_resumes_and_matches_an_uninterrupted_run(data, children, inf_run_alongside,
                                                                              reference, tmp_path):
    import pandas as pd

    out = tmp_path / "killed"
    victim = children.start(_command(data, out), env={"HPA_TEST_SLOW": "1.0"})
    killed_at = _kill_mid_second_epoch(victim, out, signal.SIGKILL)
    victim_out = finish(victim, timeout=30)
    assert killed_at is not None, f"the run ended or stalled before it could be killed:\n{victim_out[-3000:]}"
    assert victim.returncode == -signal.SIGKILL
    state = read_json(out / "backup" / "training_metadata.json")
    assert 1 <= state["epoch"] <= killed_at["epoch"] and state["iterations"] == state["epoch"] * STEPS
    resumed_from = state["epoch"]

    resumed = children.start(_command(data, out))
    resumed_out = finish(resumed)
    assert resumed.returncode == 0, resumed_out[-3000:]
    # it started at the backed-up epoch (Keras numbers epochs from 1), not at epoch 1
    assert f"Epoch {resumed_from + 1}/{EPOCHS}" in resumed_out
    assert f"Epoch {resumed_from}/{EPOCHS}" not in resumed_out
    reference_out = reference()

    # every epoch logged once, in order, across the two processes
    assert list(pd.read_csv(out / "training_log.csv")["epoch"]) == list(range(EPOCHS))
    final = read_json(out / "backup" / "training_metadata.json")
    assert (final["epoch"], final["iterations"]) == (EPOCHS, EPOCHS * STEPS)  # optimizer step = schedule position

    _assert_same_weights(out, reference_out)
    # the training metric rows of the resumed epochs match too (same data, same order, same augmentation)
    log_a = pd.read_csv(out / "training_log.csv")
    log_b = pd.read_csv(reference_out / "training_log.csv")
    np.testing.assert_allclose(log_a["loss"], log_b["loss"], rtol=1e-6)
    # and the resumed run left no temporary files behind
    assert [p for p in out.rglob("*.tmp*")] == []


def test_sigterm_stops_at_a_step_boundary_says_how_to_resume_and_the_rerun_matches(data, children, reference,
                                                                                  tmp_path):
    """SIGTERM mid-epoch: the run stops after the current step (not mid-write), exits 143 with one line naming the
    resume state; the re-run ends with the uninterrupted run's weights."""
    out = tmp_path / "terminated"
    victim = children.start(_command(data, out), env={"HPA_TEST_SLOW": "1.0"})
    signalled_at = _kill_mid_second_epoch(victim, out, signal.SIGTERM)
    text = finish(victim, timeout=60)
    assert signalled_at is not None, f"the run ended or stalled before the signal:\n{text[-3000:]}"
    assert victim.returncode == 128 + signal.SIGTERM, text[-3000:]
    # one line (stderr; it may follow Keras' unfinished progress bar on stdout), no traceback
    assert text.count("hpa-zoo train:") == 1 and "Traceback" not in text, text[-3000:]
    assert re.search(rf"hpa-zoo train: SIGTERM at epoch 2, step [1-{STEPS}]: the resume state in "
                     rf"{re.escape(str(out / 'backup'))} is from the end of the last finished epoch \(epoch 1\); "
                     rf"re-run the same command to continue\n", text), text[-3000:]
    progress = read_json(out / "progress.json")
    assert (progress["epoch"], progress["batch"]) in ((1, signalled_at["batch"]), (1, signalled_at["batch"] + 1))
    state = read_json(out / "backup" / "training_metadata.json")
    assert (state["epoch"], state["iterations"]) == (1, STEPS)  # the interrupted epoch is not recorded as done

    resumed = children.start(_command(data, out))
    resumed_out = finish(resumed)
    assert resumed.returncode == 0, resumed_out[-3000:]
    assert f"Epoch 2/{EPOCHS}" in resumed_out and f"Epoch 1/{EPOCHS}" not in resumed_out
    _assert_same_weights(out, reference())
    assert [p for p in out.rglob("*.tmp*")] == []


def test_sigterm_with_python_map_calls_in_flight_exits_instead_of_hanging(data, children, tmp_path):
    """The input pipeline is mid-stream when the run stops: its iterator must be released while the interpreter
    still runs. Left to the interpreter's shutdown, a ``tf.numpy_function`` call in flight then can never take the
    GIL again and the process hangs after printing its message (measured before the fix: every such run)."""
    out = tmp_path / "in_flight"
    victim = children.start(_command(data, out), env={"HPA_TEST_SLOW": "1.0", "HPA_TEST_SLOW_MAP": "2.0"})
    signalled_at = _kill_mid_second_epoch(victim, out, signal.SIGTERM)
    text = finish(victim, timeout=60)
    assert signalled_at is not None, f"the run ended or stalled before the signal:\n{text[-3000:]}"
    assert victim.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert text.count("hpa-zoo train: SIGTERM at epoch 2") == 1 and "Traceback" not in text, text[-3000:]
    state = read_json(out / "backup" / "training_metadata.json")
    assert (state["epoch"], state["iterations"]) == (1, STEPS)


def test_infinite_loss_stops_the_cli_naming_the_step_and_the_last_good_checkpoint(inf_run):
    proc, out = inf_run  # HPA_TEST_INF_AT: the loss is inf from epoch 2, its second step
    text = finish(proc)
    assert proc.returncode == 1, text[-3000:]
    assert "error: training loss became inf at epoch 2, step 2 of the epoch" in text
    best = out / "checkpoints" / "best.weights.h5"
    assert f"last good checkpoint is {best}" in text and best.is_file()
    state = read_json(out / "backup" / "training_metadata.json")
    assert (state["epoch"], state["iterations"]) == (1, STEPS)  # the diverged weights were never backed up


if __name__ == "__main__":
    sys.exit(_driver(sys.argv[1:]))
