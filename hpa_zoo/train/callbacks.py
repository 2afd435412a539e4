"""The trainer's Keras callbacks, each surviving a kill at any instant: the best checkpoint (`AtomicBestCheckpoint`), the
resumable backup (`AtomicBackupAndRestore`) and the divergence stop (`StopOnNaN` -> `TrainingDivergedError`)."""
from __future__ import annotations

import logging
import json
import math
from pathlib import Path
from typing import Optional

import keras

from hpa_zoo.atomic import atomic_path, atomic_write_text, ensure_free_space, model_bytes, save_weights_atomic
from hpa_zoo.errors import ConfigError, HpaZooError

log = logging.getLogger(__name__)


class TrainingDivergedError(HpaZooError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""


class AtomicBestCheckpoint(keras.callbacks.Callback):
    """Save the weights when ``monitor`` improves, through a temporary file renamed into place.

    The file holds the layers only (`hpa_zoo.atomic.save_network_weights`): it becomes the final model, while
    resuming reads `AtomicBackupAndRestore`'s files, which keep the optimizer's state too.

    Keras' ModelCheckpoint writes the target file directly (an interruption mid-write leaves a truncated
    file); this one never does. The best value survives a resume: it is kept in ``best.json`` beside the file.
    """

    def __init__(self, path: Path, monitor: str, mode: str = "min", verbose: int = 1):
        super().__init__()
        self.path, self.monitor, self.mode, self.verbose = Path(path), monitor, mode, verbose
        self.info_path = self.path.with_name("best.json")
        self.best: Optional[dict] = None

    def on_train_begin(self, logs=None):
        if self.info_path.is_file() and self.path.is_file():
            self.best = json.loads(self.info_path.read_text())

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value < self.best["value"] if self.mode == "min" else value > self.best["value"]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise ConfigError(f"checkpoint monitor {self.monitor!r} is not among the logged metrics "
                              f"{sorted(logs)}; fix Recipe.monitor or add the metric")
        value = float(logs[self.monitor])
        if not self._improved(value):
            return
        save_weights_atomic(self.model, self.path, hint="pass another --out", optimizer=False)  # layers only
        self.best = {"epoch": epoch + 1, "monitor": self.monitor, "value": value, "path": str(self.path)}
        atomic_write_text(self.info_path, json.dumps(self.best, indent=2))
        if self.verbose:
            log.info("epoch %d: %s improved to %.5f, saved %s", epoch + 1, self.monitor, value, self.path)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` (per epoch, kept after the run) whose state survives a kill at any instant.

    Keras writes ``latest.weights.h5`` and ``training_metadata.json`` in place, one after the other: a kill
    between the two leaves epoch e+1 weights with an epoch-e counter, and a resumed run silently trains epoch
    e+1 twice. Here every file goes through `hpa_zoo.atomic`, the metadata records the sha256 of the weights
    file beside it, and the previous epoch's pair is kept (``previous*``); on restore the newest *consistent* pair
    is used (weights whose sha256 equals the metadata's), so a kill between the two renames falls back to the
    previous epoch instead of resuming from a mismatched state.

    Files in ``backup_dir``: ``latest.weights.h5`` (model + optimizer variables), ``training_metadata.json``
    ``{"epoch": int, "batch": 0, "iterations": int, "sha256": str}``, and the previous epoch's pair
    ``previous.weights.h5`` + ``previous_training_metadata.json``.
    """

    def __init__(self, backup_dir):
        super().__init__(backup_dir, save_freq="epoch", double_checkpoint=True, delete_checkpoint=False)

    @staticmethod
    def _pairs(backup_dir: Path):
        backup_dir = Path(backup_dir)
        weights, meta = backup_dir / "latest.weights.h5", backup_dir / "training_metadata.json"
        previous = (backup_dir / "previous.weights.h5", backup_dir / "previous_training_metadata.json")
        return [(weights, meta), previous]

    @classmethod
    def consistent_state(cls, backup_dir: Path) -> Optional[dict]:
        """The newest ``{"epoch", "batch", "iterations", "sha256", "weights"}`` whose weights match it, else None."""
        from hpa_zoo.zoo.weights import sha256_file

        for weights, meta in cls._pairs(backup_dir):
            if not (weights.is_file() and meta.is_file()):
                continue
            try:
                state = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue
            if "sha256" in state and sha256_file(weights) != state["sha256"]:
                continue
            return {**state, "weights": str(weights)}
        return None

    def _load_model(self):
        state = self.consistent_state(Path(self.backup_dir))
        if state is None:
            if any(w.exists() for w, _ in self._pairs(Path(self.backup_dir))):
                raise ConfigError(f"{self.backup_dir} holds no readable, consistent resume state (weights "
                                  f"unreadable or not matching training_metadata.json); delete the folder to "
                                  f"start over")
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(state["weights"])
        self.model._initial_epoch = int(state["epoch"])

    def on_train_begin(self, logs=None):
        self._load_model()

    def _save_model(self):
        from hpa_zoo.atomic import atomic_snapshot
        from hpa_zoo.zoo.weights import sha256_file

        (weights, meta), (old_weights, old_meta) = self._pairs(Path(self.backup_dir))
        if weights.is_file() and meta.is_file():  # keep the previous pair (copies, each atomic)
            atomic_snapshot(weights, old_weights)  # hard links: no 100 MB copy each epoch
            atomic_snapshot(meta, old_meta)
        ensure_free_space(weights, model_bytes(self.model), hint="pass another --out")
        with atomic_path(weights) as tmp:
            self.model.save_weights(tmp)
            digest = sha256_file(tmp)
        state = {"epoch": self._current_epoch, "batch": self._last_batch_seen,
                 "iterations": int(self.model.optimizer.iterations.numpy()), "sha256": digest}
        atomic_write_text(meta, json.dumps(state))


class StopOnNaN(keras.callbacks.Callback):
    """Raise `TrainingDivergedError` on the first batch whose loss is NaN/inf.

    Raising (rather than ``stop_training``) keeps the epoch-end callbacks from writing the diverged weights
    over the backup, so the backup and the best checkpoint stay the last good state.
    """

    def __init__(self, best: AtomicBestCheckpoint, backup_dir: Path):
        super().__init__()
        self.best, self.backup_dir = best, backup_dir
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        step = int(self.model.optimizer.iterations.numpy())
        if self.best.best:
            last = (f"the last good checkpoint is {self.best.path} (epoch {self.best.best['epoch']}, "
                    f"{self.best.monitor}={self.best.best['value']:.5f})")
        else:
            last = "there is no good checkpoint yet"
        raise TrainingDivergedError(
            f"training loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1} of the epoch "
            f"(optimizer step {step}); {last}; the resume state in {self.backup_dir} is from the end of the last "
            f"finished epoch. Lower the learning rate, try --precision mixed_bfloat16 or float32, or check "
            f"the input data")
