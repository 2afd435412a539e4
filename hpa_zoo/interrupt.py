"""SIGINT / SIGTERM: stop cleanly instead of dying wherever the signal lands.

* `stop_at_step_boundary` (train, finetune): the first signal only sets a flag; the `StepBoundaryStop` callback
  raises `Interrupted` at the end of the current training step, so no checkpoint, backup or log write is cut and
  the resume state on disk is the last finished epoch's. A second signal interrupts at once.
* `terminate_raises` (the CLI, every command): SIGTERM raises `Interrupted` in the main thread like Ctrl-C does,
  so the ``finally`` / atomic-write cleanups run (a half-written synthetic dataset, TFDS build or export is
  removed instead of left behind; nothing half-written is ever renamed into place either way).

`Interrupted` is a `KeyboardInterrupt` (code that handles Ctrl-C handles it) with the signal number, so the CLI
exits with ``128 + signum`` (130 for SIGINT, 143 for SIGTERM) and prints its one-line message.

* `release_frames` (the trainer and the CLI, on any interruption): the frames an interrupted call unwound still
  hold its input pipeline's iterator, in reference cycles only the garbage collector frees. Left to the
  interpreter's shutdown, that iterator's destructor waits for the ``tf.numpy_function`` map calls in flight
  (Team 1's OpenCV resize, `hpa_zoo.data.cv_ops`), which can no longer take the GIL once shutdown has begun: the
  process hung after printing its message (tests/test_resume.py reproduces it). Freed at once instead, the
  destructor waits for those calls (each a few milliseconds) and the process exits.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
import traceback
from typing import Iterator

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal. ``signum``: the signal; ``str()``: the one-line message (what to do next)."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "interrupted"


def release_frames(exc: BaseException) -> None:
    """Free now what the finished frames of ``exc``'s traceback hold (see the module docstring), then collect.

    Clears the locals of every frame ``exc`` unwound (the still-running frames, the caller's among them, are left
    alone), so ``exc`` keeps its type, message and traceback line numbers but no longer keeps the interrupted
    call's objects alive; `gc.collect` then frees the cycles they were in (tf.data iterators, Keras epoch
    iterators). Call it in the ``except`` clause that handles the interruption.
    """
    traceback.clear_frames(exc.__traceback__)
    context = exc.__context__
    while context is not None:  # an exception raised while handling another keeps that one's frames too
        traceback.clear_frames(context.__traceback__)
        context = context.__context__
    collected = gc.collect()
    log.debug("released the interrupted call's frames (%d objects collected)", collected)


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15 ..."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _Flag:
    signum: int | None = None


def _make_step_callback(flag: _Flag):
    import keras

    class StepBoundaryStop(keras.callbacks.Callback):
        """Raises `Interrupted` at the end of the first training step after a signal (see the module docstring)."""

        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if flag.signum is not None:
                raise Interrupted(f"{signal_name(flag.signum)} at epoch {self.epoch + 1}, step {batch + 1}",
                                  flag.signum)

    return StepBoundaryStop()


@contextlib.contextmanager
def stop_at_step_boundary() -> Iterator:
    """Within the block SIGINT/SIGTERM only set a flag; yields the Keras callback that acts on it.

    Put the callback first in ``fit(callbacks=...)``. Outside the main thread (signals cannot be caught there)
    the handlers are left alone and the callback never fires.
    """
    flag = _Flag()
    callback = _make_step_callback(flag)
    if threading.current_thread() is not threading.main_thread():
        yield callback
        return

    def handler(signum, frame):
        if flag.signum is not None:
            raise Interrupted(f"second {signal_name(signum)}: stopped at once", signum)
        flag.signum = signum
        log.warning("%s received: stopping at the end of the current training step (send it again to stop now)",
                    signal_name(signum))

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield callback
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """Within the block SIGTERM raises `Interrupted` in the main thread (as SIGINT raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(f"stopped by {signal_name(signum)}; nothing half-written was kept", signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
