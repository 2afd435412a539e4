"""One run folder, one writer (`hpa_zoo.runlock`): real processes hold and contend for a real ``--out``.

A holder child takes the lock through `hpa_zoo.runlock.run_lock` (the code the commands use) and waits; the real
``hpa-zoo train`` CLI in a second process, and `predict` / `predict_images` / `finetune` in this one, are refused
at once with the holder's pid and start time. After the holder is SIGKILLed its lock does not block the next run.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import time

import pytest

from hpa_zoo.errors import HpaDataError
from hpa_zoo.runlock import HOLDER_NAME, RunFolderBusyError, run_lock
from tests._subprocess import Children, finish, read_json, start

HOLD = """
import sys, time
from hpa_zoo.runlock import run_lock
with run_lock(sys.argv[1], "train"):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """(process, out dir): a child process holding the lock of ``tmp_path/"run"`` (killed at the end)."""
    kids = Children()
    out = tmp_path / "run"
    proc = kids.start(["-c", HOLD, str(out)])
    assert proc.stdout.readline().strip() == "locked"
    yield proc, out
    kids.close()


def test_second_writer_is_refused_at_once_naming_the_holder(holder, tmp_path):
    proc, out = holder
    record = read_json(out / HOLDER_NAME)
    assert record["pid"] == proc.pid and record["command"] == "train"
    cli = start(["-m", "hpa_zoo.cli", "train", "team1_densenet121_512", "--data", str(tmp_path / "nowhere"),
                 "--out", str(out)])
    # meanwhile, in this process: predict / predict_images / finetune on the same folder
    from hpa_zoo.train.finetune import finetune
    from hpa_zoo.infer.predict import predict
    from hpa_zoo.infer.predict_images import predict_images

    for call in (lambda: predict(tmp_path / "preset", tmp_path, out_dir=out, verbose=0),
                 lambda: predict_images(tmp_path / "preset", tmp_path, out_dir=out, verbose=0),
                 lambda: finetune("team1_densenet121_512", tmp_path / "x.csv", tmp_path, out_dir=out, verbose=0)):
        started = time.monotonic()
        with pytest.raises(RunFolderBusyError, match=rf"{out} is in use by hpa-zoo train \(pid {proc.pid} on .*, "
                                                     rf"started {re.escape(record['started'])}\).*pass another --out"):
            call()
        assert time.monotonic() - started < 1.0  # refused, not waited for
    text = finish(cli, timeout=120)
    assert cli.returncode == 1, text[-2000:]
    assert f"hpa-zoo train: error: {out} is in use by hpa-zoo train (pid {proc.pid}" in text
    assert proc.poll() is None and read_json(out / HOLDER_NAME)["pid"] == proc.pid  # the holder is untouched


def test_lock_of_a_sigkilled_process_does_not_block(holder, tmp_path):
    proc, out = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert read_json(out / HOLDER_NAME)["pid"] == proc.pid  # its record is stale, the OS lock is gone
    from hpa_zoo.train.trainer import train

    with pytest.raises(HpaDataError, match="nowhere': no such folder"):  # got past the lock
        train("team1_densenet121_512", str(tmp_path / "nowhere"), out_dir=out, verbose=0)
    with run_lock(out, "predict"):
        assert read_json(out / HOLDER_NAME)["pid"] == os.getpid()
    assert not (out / HOLDER_NAME).exists()  # released: the record goes with it


def test_lock_is_released_after_an_error_and_nested_folders_are_independent(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with run_lock(tmp_path / "a", "train"):
            1 / 0
    with run_lock(tmp_path / "a", "train"), run_lock(tmp_path / "b", "predict"):
        with pytest.raises(RunFolderBusyError, match=rf"pid {os.getpid()}"):
            with run_lock(tmp_path / "a", "predict"):
                pass


if __name__ == "__main__":
    sys.exit(0)
