"""Atomic artifacts: a writer that fails half-way never damages the previous file and leaves no temp file.

Covers `hpa_zoo.atomic` (bytes, text, CSV, a named-path writer), the preset folder (`models_api.save_preset`)
and the training state (`callbacks.AtomicBackupAndRestore`, `callbacks.AtomicBestCheckpoint`), including the
resume state's fallback when a kill lands between the weights and the metadata rename.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hpa_zoo import atomic


class Boom(RuntimeError):
    pass


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_failure_mid_write_keeps_the_old_file_and_no_temp(tmp_path):
    from hpa_zoo.atomic import atomic_path, atomic_write_text

    target = tmp_path / "report.json"
    atomic_write_text(target, '{"v": 1}')
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write('{"v": 2, "trunc')  # half a file on disk...
                f.flush()
                assert tmp.stat().st_size > 0 and tmp.parent == target.parent
                raise Boom("disk full")  # ...then the writer dies
    assert target.read_text() == '{"v": 1}'
    assert _listing(tmp_path) == ["report.json"]


def test_atomic_to_csv_failure_inside_pandas_keeps_the_old_csv(tmp_path):
    from hpa_zoo.atomic import atomic_to_csv

    target = tmp_path / "submission.csv"
    atomic_to_csv(pd.DataFrame({"Id": ["a"], "Predicted": ["0"]}), target)
    before = target.read_bytes()

    class Exploding:
        def __str__(self):
            raise Boom("cannot format this cell")

    rows = pd.DataFrame({"Id": [f"id{i}" for i in range(5000)], "Predicted": ["1 2"] * 4999 + [Exploding()]})
    with pytest.raises(Boom):
        atomic_to_csv(rows, target)  # pandas has written ~5000 rows to the temp file when the last cell fails
    assert target.read_bytes() == before
    assert _listing(tmp_path) == ["submission.csv"]


def test_atomic_write_of_a_new_file_that_fails_leaves_nothing(tmp_path):
    from hpa_zoo.atomic import atomic_path

    with pytest.raises(Boom):
        with atomic_path(tmp_path / "sub" / "new.weights.h5") as tmp:
            assert tmp.name.endswith(".weights.h5")  # the writer's suffix check still passes
            tmp.write_bytes(b"\x89HDF")
            raise Boom("killed")
    assert _listing(tmp_path / "sub") == []


@pytest.fixture(scope="module")
def tiny():
    """The tiny CNN of tests/test_training.py (16 px, 3 classes), registered for the module's duration."""
    import keras

    from hpa_zoo import registry
    from tests.test_training import TINY, build_tiny

    registry.get_spec("team1_densenet121_512")  # fill the table first
    registry.register(registry.ModelSpec(name=TINY, team="test", builder="tests.test_training:build_tiny",
                                         input_size=16, classifier="logits"))
    model = build_tiny(num_classes=3, input_shape=(16, 16, 4))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    yield model
    registry.unregister(TINY)


def test_save_preset_failure_keeps_the_previous_preset(tiny, tmp_path, monkeypatch):
    from hpa_zoo.zoo import models_api

    preset = tmp_path / "preset"
    models_api.save_preset(tiny, preset, metadata={"version": 1})
    before = {p.name: p.read_bytes() for p in preset.iterdir()}

    real = models_api.save_network_weights  # a preset holds the layers only

    def half_then_die(model, path):
        real(model, path)
        raise Boom("killed after the weights")

    monkeypatch.setattr(models_api, "save_network_weights", half_then_die)
    with pytest.raises(Boom):
        models_api.save_preset(tiny, preset, metadata={"version": 2})
    assert {p.name: p.read_bytes() for p in preset.iterdir()} == before
    assert _listing(tmp_path) == ["preset"]


def _backup(tiny, folder, epoch):
    """Run `AtomicBackupAndRestore._save_model` as at the end of epoch ``epoch`` (1-based)."""
    from hpa_zoo.train.callbacks import AtomicBackupAndRestore

    cb = AtomicBackupAndRestore(str(folder))
    cb.set_model(tiny)
    tiny.optimizer.iterations.assign(epoch * 10)
    cb._current_epoch = epoch
    cb._save_model()
    return cb


def test_backup_write_failure_keeps_the_last_epoch_and_restores_it(tiny, tmp_path, monkeypatch):
    from hpa_zoo.train.callbacks import AtomicBackupAndRestore

    folder = tmp_path / "backup"
    tiny.optimizer.build(tiny.trainable_variables)
    _backup(tiny, folder, 1)
    saved = [np.asarray(w).copy() for w in tiny.get_weights()]
    state1 = json.loads((folder / "training_metadata.json").read_text())
    assert state1["epoch"] == 1 and state1["iterations"] == 10 and len(state1["sha256"]) == 64

    real = type(tiny).save_weights

    def crash_mid_write(self, path, *a, **k):
        real(self, path, *a, **k)
        with open(path, "r+b") as f:
            f.truncate(100)  # a half-written HDF5 file
        raise Boom("killed inside save_weights")

    monkeypatch.setattr(type(tiny), "save_weights", crash_mid_write)
    tiny.set_weights([w + 1.0 for w in saved])
    with pytest.raises(Boom):
        _backup(tiny, folder, 2)
    monkeypatch.undo()
    assert json.loads((folder / "training_metadata.json").read_text()) == state1
    assert not [p for p in folder.iterdir() if ".tmp" in p.name]

    state = AtomicBackupAndRestore.consistent_state(folder)
    assert state["epoch"] == 1 and state["weights"].endswith("latest.weights.h5")
    cb = AtomicBackupAndRestore(str(folder))
    cb.set_model(tiny)
    cb.on_train_begin()
    assert tiny._initial_epoch == 1
    for got, want in zip(tiny.get_weights(), saved):
        np.testing.assert_array_equal(got, want)


def test_kill_between_weights_and_metadata_falls_back_to_the_previous_epoch(tiny, tmp_path):
    """Epoch-3 weights renamed into place, epoch-2 metadata still beside them: never resume from that pair."""
    from hpa_zoo.atomic import atomic_path
    from hpa_zoo.train.callbacks import AtomicBackupAndRestore

    folder = tmp_path / "backup"
    tiny.optimizer.build(tiny.trainable_variables)
    _backup(tiny, folder, 1)
    _backup(tiny, folder, 2)
    epoch2 = [np.asarray(w).copy() for w in tiny.get_weights()]
    # the first half of epoch 3's save: previous pair copied, new weights renamed in; then SIGKILL
    (folder / "previous.weights.h5").write_bytes((folder / "latest.weights.h5").read_bytes())
    (folder / "previous_training_metadata.json").write_bytes((folder / "training_metadata.json").read_bytes())
    tiny.set_weights([w - 3.0 for w in epoch2])
    tiny.optimizer.iterations.assign(30)
    with atomic_path(folder / "latest.weights.h5") as tmp:
        tiny.save_weights(tmp)

    state = AtomicBackupAndRestore.consistent_state(folder)
    assert state["epoch"] == 2 and state["weights"].endswith("previous.weights.h5")
    cb = AtomicBackupAndRestore(str(folder))
    cb.set_model(tiny)
    cb.on_train_begin()
    assert tiny._initial_epoch == 2 and int(tiny.optimizer.iterations.numpy()) == 20
    for got, want in zip(tiny.get_weights(), epoch2):
        np.testing.assert_array_equal(got, want)


def test_unusable_backup_is_a_clear_error(tiny, tmp_path):
    from hpa_zoo.errors import ConfigError
    from hpa_zoo.train.callbacks import AtomicBackupAndRestore

    folder = tmp_path / "backup"
    folder.mkdir()
    (folder / "latest.weights.h5").write_bytes(b"not hdf5")
    (folder / "training_metadata.json").write_text('{"epoch": 1, "batch": 0, "sha256": "00"}')
    cb = AtomicBackupAndRestore(str(folder))
    cb.set_model(tiny)
    with pytest.raises(ConfigError, match="no readable, consistent resume state.*delete the folder"):
        cb.on_train_begin()


def test_best_checkpoint_failure_keeps_the_previous_best(tiny, tmp_path, monkeypatch):
    from hpa_zoo.train.callbacks import AtomicBestCheckpoint

    path = tmp_path / "checkpoints" / "best.weights.h5"
    cb = AtomicBestCheckpoint(path, "val_loss", "min", verbose=0)
    cb.set_model(tiny)
    cb.on_epoch_end(0, {"val_loss": 0.5})
    before, info = path.read_bytes(), (path.parent / "best.json").read_text()

    def die(model, p):
        with open(p, "wb") as f:
            f.write(b"partial")
        raise Boom("killed")

    monkeypatch.setattr(atomic, "save_network_weights", die)  # the best checkpoint holds the layers only
    with pytest.raises(Boom):
        cb.on_epoch_end(1, {"val_loss": 0.1})
    assert path.read_bytes() == before and (path.parent / "best.json").read_text() == info
    assert _listing(path.parent) == ["best.json", "best.weights.h5"]


def test_network_weights_leave_the_optimizer_out_and_load_back_without_a_warning(tiny, tmp_path):
    import warnings

    import h5py
    import keras

    import hpa_zoo
    from hpa_zoo.zoo import models_api
    from tests.test_training import build_tiny

    model = build_tiny(num_classes=3, input_shape=(16, 16, 4))  # `tiny` registers the row; this one has Adam
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    model.optimizer.build(model.trainable_variables)
    for v in model.optimizer.variables:  # a non-trivial optimizer state, to see that loading keeps it
        v.assign(np.full(v.shape, 3, dtype=v.dtype))
    full, net = tmp_path / "full.weights.h5", tmp_path / "net.weights.h5"
    model.save_weights(full)
    atomic.save_weights_atomic(model, net, optimizer=False)
    with h5py.File(full) as f_full, h5py.File(net) as f_net:
        assert "optimizer" in f_full and "optimizer" not in f_net
        assert sorted(f_net["layers"]) == sorted(f_full["layers"])
    assert net.stat().st_size < full.stat().st_size

    clone = build_tiny(num_classes=3, input_shape=(16, 16, 4))
    clone.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    clone.optimizer.build(clone.trainable_variables)
    state = [np.asarray(v).copy() for v in clone.optimizer.variables]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras' "Skipping variable loading for optimizer" would fail here
        atomic.load_network_weights(clone, net)
    for a, b in zip(clone.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for v, before in zip(clone.optimizer.variables, state):
        np.testing.assert_array_equal(np.asarray(v), before)

    preset = models_api.save_preset(model, tmp_path / "preset")  # a preset: layers only, loads as before
    with h5py.File(preset / models_api.WEIGHTS_FILE) as f:
        assert "optimizer" not in f and "layers" in f
    for a, b in zip(hpa_zoo.load(preset).get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_atomic_snapshot_keeps_the_old_bytes_when_the_source_is_rewritten(tmp_path, monkeypatch):
    import os

    src, snap = tmp_path / "latest.bin", tmp_path / "previous.bin"
    atomic.atomic_write_bytes(src, b"epoch 1")
    atomic.atomic_snapshot(src, snap)
    assert os.path.samefile(src, snap)  # a hard link: no bytes copied
    atomic.atomic_write_bytes(src, b"epoch 2")  # atomic writes make a new file
    assert snap.read_bytes() == b"epoch 1" and src.read_bytes() == b"epoch 2"
    atomic.atomic_snapshot(src, snap)  # over an existing snapshot
    assert snap.read_bytes() == b"epoch 2"

    def no_links(*a, **k):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # a file system without hard links: a copy
    atomic.atomic_write_bytes(src, b"epoch 3")
    atomic.atomic_snapshot(src, snap)
    assert snap.read_bytes() == b"epoch 3" and not os.path.samefile(src, snap)
    assert _listing(tmp_path) == ["latest.bin", "previous.bin"]
