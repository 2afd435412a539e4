"""SIGINT / SIGTERM: stop cleanly instead of dying wherever the signal lands.

* `stop_at_step_boundary` (train, finetune): the first signal only sets a flag; the `StepBoundaryStop` callback
  raises `Interrupted` at the end of the current training step, so no checkpoint, backup or log write is cut and
  the resume state on disk is the last finished epoch's. A second signal interrupts at once.
* `terminate_raises` (the CLI, every command): SIGTERM raises `Interrupted` in the main thread like Ctrl-C does,
  so the ``finally`` / atomic-write cleanups run (a half-written synthetic dataset, TFDS build or export is
  removed instead of left behind; nothing half-written is ever renamed into place either way).

`Interrupted` is a `KeyboardInterrupt` (code that handles Ctrl-C handles it) with the signal number, so the CLI
exits with ``128 + signum`` (130 for SIGINT, 143 for SIGTERM) and prints its one-line message.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
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
