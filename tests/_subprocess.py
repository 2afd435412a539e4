"""Helpers for tests that run hpa-zoo in child Python processes (a fresh TensorFlow / another Keras backend).

A child process costs a Python + TensorFlow start (several seconds of one core), so tests start their children
early with `start` (``subprocess.Popen``, non-blocking) and collect them with `finish`: the parent keeps working,
on the second core, while the child imports and builds. `Children` kills whatever a test (or a module fixture)
left running, so a failed assertion never leaves a training process behind.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Environment every child gets on top of ``os.environ``: quiet TensorFlow, never a GPU.
QUIET_CPU_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def start(args: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path = REPO) -> subprocess.Popen:
    """Start ``python <args>`` (the running interpreter) in ``cwd`` without waiting.

    Args:
        args: arguments after the interpreter, e.g. ``["-m", "tests.test_resume", "train", ...]``.
        env: variables set on top of ``os.environ`` and `QUIET_CPU_ENV`.
        cwd: working directory (default the repository root, so ``-m tests.x`` resolves).

    Returns:
        the ``subprocess.Popen``; stdout and stderr are merged into one text pipe (read it with `finish`).
    """
    full_env = {**os.environ, **QUIET_CPU_ENV, **(env or {})}
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300, *, check: bool = False) -> str:
    """Wait for ``proc`` (from `start`) and return its merged stdout + stderr.

    Args:
        proc: the child.
        timeout: seconds; past it the child is killed and the test fails with the tail of its output.
        check: also fail the test (with the output tail) when the exit status is not 0.

    Returns:
        the child's whole output (str).
    """
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(map(str, proc.args[1:4]))} did not finish in {timeout}s:\n{out[-3000:]}")
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, proc.args[1:4]))} exited with {proc.returncode}:\n{out[-3000:]}")
    return out


def last_json_line(text: str) -> dict:
    """The last line of ``text`` that starts with ``{``, parsed (children print their result as one JSON line)."""
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, f"no JSON result line in the child's output:\n{text[-3000:]}"
    return json.loads(lines[-1])


def read_json(path: Path):
    """The JSON in ``path``, or None while it is missing or half-written (a child may be writing it)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class Children:
    """Children started through it are killed at `close` if still running (use it from a fixture)."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, args: Sequence[str], **kw) -> subprocess.Popen:
        """`start`, remembered for `close`."""
        proc = start(args, **kw)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Kill and reap every child that is still running."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def selected(request, test_name: str) -> bool:
    """Whether ``test_name`` (a test function of the requesting module) is among the tests this session runs, so a
    module fixture starts a child early only for a test that will collect it.

    Args:
        request: the fixture's ``request``.
        test_name: the test function's name.
    """
    return any(getattr(item, "originalname", item.name) == test_name and item.module is request.module
               for item in request.session.items)
