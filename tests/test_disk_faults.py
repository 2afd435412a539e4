"""Full and read-only disks (a real 1 MiB tmpfs, the ``small_disk`` fixture; ENOSPC / EROFS from the kernel, no
mocks): predictions CSVs, presets, checkpoints and the resume state stop with `DiskWriteError` naming the file, the
free space and the fix; earlier files stay intact and nothing half-written is left or loadable. The weights cache
is covered in tests/test_weights.py.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpa_zoo.atomic import atomic_to_csv, atomic_write_text
from hpa_zoo.errors import DiskWriteError
from tests.test_training import synthetic_data, tiny_model  # noqa: F401 (fixtures)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/


def _fill(disk, leave: int) -> None:
    """Fill `disk` until about `leave` bytes are free."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    (disk / "filler.bin").write_bytes(b"\0" * max(0, free - leave))


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or ".partial" in p.name)


def test_predictions_csv_on_a_full_disk_keeps_the_earlier_file(small_disk):
    target = small_disk / "sub" / "probabilities.csv"
    earlier = pd.DataFrame({"Id": ["a", "b"], "p": [0.1, 0.9]})
    atomic_to_csv(earlier, target)
    big = pd.DataFrame(np.random.default_rng(0).random((20000, 28)))  # ~10 MB of text
    with pytest.raises(DiskWriteError, match=rf"cannot write {target}: the disk is full \(\d+\.\d MB free in "
                                             rf"{small_disk}/sub\); free space in {small_disk}/sub, or write to"):
        atomic_to_csv(big, target)
    pd.testing.assert_frame_equal(pd.read_csv(target), earlier)
    assert _leftovers(small_disk) == []


def test_read_only_disk_names_the_path(small_disk):
    target = small_disk / "run.json"
    atomic_write_text(target, "{}")
    small_disk.read_only()
    with pytest.raises(DiskWriteError, match=rf"cannot write {target}: the file system is read-only .*make "
                                             rf"{small_disk} writable"):
        atomic_write_text(target, json.dumps({"x": 1}))
    assert target.read_text() == "{}"


def test_preset_on_a_full_disk_is_not_written_and_the_earlier_one_still_loads(small_disk, tiny_registry_model):
    import hpa_zoo
    from hpa_zoo.zoo.models_api import save_preset

    model = hpa_zoo.load(tiny_registry_model)
    save_preset(model, small_disk / "preset", model_name=tiny_registry_model)
    first = [np.array(w) for w in model.weights]
    for w in model.weights:
        w.assign(w + 1.0)
    _fill(small_disk, leave=8_000)
    with pytest.raises(DiskWriteError, match=rf"cannot write .*: the disk is full .*free space in {small_disk}"):
        save_preset(model, small_disk / "preset", model_name=tiny_registry_model)
    again = hpa_zoo.load(small_disk / "preset")  # the earlier preset, whole
    for a, b in zip(again.weights, first):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert _leftovers(small_disk) == []


def test_training_on_a_full_disk_stops_naming_the_checkpoint_and_leaves_no_loadable_half(small_disk, tiny_model,
                                                                                          synthetic_data):
    from hpa_zoo.train.trainer import AtomicBackupAndRestore, train

    out = small_disk / "run"
    out.mkdir()
    _fill(small_disk, leave=24_000)  # room for run.json, folds.csv and logs, not for weights + optimizer state
    with pytest.raises(DiskWriteError, match=rf"cannot write {out}/\S+\.weights\.h5: the disk is full \(.* MB free in "
                                             rf"{out}\S*, about .* MB needed\); free space in {out}\S*, or pass "
                                             rf"another --out"):
        train(tiny_model, synthetic_data, out_dir=out, epochs=2, steps_per_epoch=1, verbose=0)
    assert AtomicBackupAndRestore.consistent_state(out / "backup") is None  # nothing a re-run would trust
    assert not list(out.rglob("*.weights.h5")) and _leftovers(small_disk) == []
    (small_disk / "filler.bin").unlink()  # space freed: the same command now runs through
    preset = train(tiny_model, synthetic_data, out_dir=out, epochs=2, steps_per_epoch=1, verbose=0)
    assert (preset / "metadata.json").is_file()
    assert AtomicBackupAndRestore.consistent_state(out / "backup")["epoch"] == 2


def test_predict_images_on_a_full_disk_keeps_the_earlier_predictions(small_disk, tiny_registry_model, tmp_path):
    """The real `predict_images` writing into a full ``--out``: DiskWriteError naming the CSV; the earlier run's
    outputs are untouched, byte for byte."""
    from benchmarks.load_checks import write_test_folder
    from hpa_zoo.infer.predict_images import predict_images

    images = write_test_folder(tmp_path / "kaggle", 24, size=32) / "test"
    out = small_disk / "pred"
    first = predict_images(tiny_registry_model, images, out_dir=out, tta="none", verbose=0)
    before = {k: Path(p).read_bytes() for k, p in first.items()}
    _fill(small_disk, leave=2_000)
    with pytest.raises(DiskWriteError, match=rf"cannot write {out}/\S+\.csv: the disk is full .*free space in {out}"):
        predict_images(tiny_registry_model, images, out_dir=out, tta="d4", verbose=0)
    assert {k: Path(p).read_bytes() for k, p in first.items()} == before
    assert _leftovers(small_disk) == []
