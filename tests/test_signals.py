"""SIGTERM during `hpa-zoo synth` and `hpa-zoo prepare` (real CLI processes): exit 143 with one line, and nothing
that looks complete (no dataset folder, no prepared TFDS version, no leftover partial folder).

SIGINT/SIGTERM during `train` (stop at a step boundary, resume to the uninterrupted weights) is in
tests/test_resume.py, beside the SIGKILL case.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from tests._subprocess import Children, finish


@pytest.fixture
def children():
    kids = Children()
    yield kids
    kids.close()


def _signal_when(proc, ready, signum=signal.SIGTERM, timeout=120.0) -> bool:
    """Send `signum` to `proc` once `ready()` is true; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            os.kill(proc.pid, signum)
            return True
        time.sleep(0.05)
    return False


def _one_line(text: str, command: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(f"hpa-zoo {command}:")]
    assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
    return lines[0]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_sigterm_during_synth_leaves_no_dataset(children, tmp_path, workers):
    """In this process or with worker processes: the queued images are dropped, not rendered first."""
    out = tmp_path / "syn"
    proc = children.start(["-m", "hpa_zoo.cli", "synth", str(out), "--n-train", "6000", "--n-test", "0",
                           "--size", "64", "--workers", workers])
    partial = lambda: [p for p in tmp_path.glob(".syn.partial-*/train/*.png")]  # noqa: E731
    assert _signal_when(proc, lambda: len(partial()) >= 8), finish(proc)[-3000:]
    signalled = time.monotonic()
    text = finish(proc, timeout=60)
    assert time.monotonic() - signalled < 8, "the queued work ran to the end before stopping"
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert _one_line(text, "synth") == "hpa-zoo synth: stopped by SIGTERM; nothing half-written was kept"
    assert not out.exists() and list(tmp_path.iterdir()) == []  # the partial folder is gone too


def test_sigterm_during_prepare_leaves_no_prepared_dataset(children, tmp_path):
    from hpa_zoo.errors import HpaDataError
    from hpa_zoo.data.sources import tfds_dataset
    from hpa_zoo.data.synthetic import write_synthetic_dataset

    manual = write_synthetic_dataset(tmp_path / "manual", n_train=400, n_test=4, size=32, workers=0, progress=False)
    data_dir = tmp_path / "tfds"
    proc = children.start(["-m", "hpa_zoo.cli", "prepare", "--dataset", "hpa_kaggle", "--manual-dir", str(manual),
                           "--data-dir", str(data_dir), "--config", "128"])
    building = lambda: any(p.name.startswith("incomplete") for p in (data_dir / "hpa_kaggle" / "128").glob("*"))  # noqa
    assert _signal_when(proc, building), finish(proc)[-3000:]
    text = finish(proc, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert _one_line(text, "prepare").startswith("hpa-zoo prepare: stopped by SIGTERM")
    assert not (data_dir / "hpa_kaggle" / "128" / "2.0.0").exists()
    with pytest.raises(HpaDataError, match="is not prepared"):
        tfds_dataset("hpa_kaggle/128", "train", data_dir=data_dir)
