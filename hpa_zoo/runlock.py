"""One run folder, one writer: `hpa-zoo train` / `finetune` / `predict` hold an exclusive lock on their ``--out``.

The lock is `filelock.FileLock` on ``<out>/.hpa_zoo.lock``: an OS lock (``flock`` on POSIX) that the kernel drops
when the process ends, however it ends, so a lock left by a killed process (SIGKILL, a crash, a lost machine on a
local disk) never blocks the next run. Beside it, ``<out>/.hpa_zoo.lock.json`` records the holder (pid, host,
command, start time) so the refusal can name it; that record is only read when the OS lock is taken, so a stale
record of a dead process is simply overwritten.

Network file systems without working ``flock`` are not protected (filelock falls back to a soft lock there).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import filelock

from hpa_zoo.atomic import atomic_write_text
from hpa_zoo.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = ".hpa_zoo.lock"
HOLDER_NAME = ".hpa_zoo.lock.json"


class RunFolderBusyError(ConfigError):
    """Another live process writes into the same run folder; the message names its pid and start time."""


def _holder(out_dir: Path) -> str:
    try:
        info = json.loads((out_dir / HOLDER_NAME).read_text())
    except (OSError, ValueError):
        return "another process (its pid is not recorded yet)"
    return (f"hpa-zoo {info.get('command', '?')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"started {info.get('started', '?')})")


@contextlib.contextmanager
def run_lock(out_dir: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the exclusive writer lock of `out_dir` (created if missing) for the duration of the block.

    Args:
        out_dir: the run folder (``--out``).
        command: what holds it, for the message a second writer gets (``"train"``...).
    Yields:
        ``Path(out_dir)``.
    Raises:
        RunFolderBusyError (a ConfigError): a live process holds the lock; the message names its pid, host,
            command and start time, and what to do. Raised at once, without waiting.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(out_dir / LOCK_NAME, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RunFolderBusyError(
            f"{out_dir} is in use by {_holder(out_dir)}; two runs writing one folder would mix their files. Wait "
            f"for it to finish (or stop it), or pass another --out") from None
    try:
        try:
            atomic_write_text(out_dir / HOLDER_NAME, json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "argv": sys.argv}))
        except OSError as exc:  # a full disk: the run's own first write will say so, naming its file
            log.warning("could not record the holder of %s (%s); the lock itself is held", out_dir, exc)
        yield out_dir
    finally:
        with contextlib.suppress(OSError):
            (out_dir / HOLDER_NAME).unlink()
        lock.release()


def holds_run_lock(command: str, out_arg: str = "out_dir") -> Callable:
    """Decorator: the function runs inside `run_lock` of its `out_arg` argument (``out_dir=``).

    A call in the same process that already holds the lock on that folder (a `train` inside another locked
    function) would be refused as well, so nest only over different folders.
    """
    def wrap(func):
        signature = inspect.signature(func)

        @functools.wraps(func)
        def locked(*args, **kwargs):
            bound = signature.bind_partial(*args, **kwargs)
            out_dir = bound.arguments.get(out_arg)
            if out_dir is None:
                return func(*args, **kwargs)
            with run_lock(out_dir, command):
                return func(*args, **kwargs)

        return locked

    return wrap
