"""Argument sanity for the public entry points: counts, sizes and fractions that cannot work raise `ConfigError`.

One place for the wording, so ``batch_size=0`` reads the same from ``train``, ``predict``, ``finetune``, ``folds``
or ``synth``: ``"<name>=<value>: must be a positive integer"`` plus the entry point's hint.
"""
from __future__ import annotations

import numbers
from typing import Sequence

from hpa_zoo.errors import ConfigError


def _suffix(hint: str) -> str:
    return f" ({hint})" if hint else ""


def positive_int(value, name: str, *, minimum: int = 1, hint: str = "", allow_none: bool = False):
    """`value` as an int >= `minimum` (None passes through when `allow_none`).

    Raises:
        ConfigError: not an integer (bools and non-integral floats included) or below `minimum`.
    """
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and isinstance(value, float) and value.is_integer():
        ok = True
    if not ok or int(value) < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{name}={value!r}: must be {need}{_suffix(hint)}")
    return int(value)


def positive_float(value, name: str, *, hint: str = "", allow_none: bool = False):
    """`value` as a float > 0 (None passes through when `allow_none`).

    Raises:
        ConfigError: not a number, not finite, or <= 0.
    """
    if value is None and allow_none:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not number > 0 or number == float("inf"):
        raise ConfigError(f"{name}={value!r}: must be a positive number{_suffix(hint)}")
    return number


def open_fraction(value, name: str, *, hint: str = "") -> float:
    """`value` as a float strictly between 0 and 1.

    Raises:
        ConfigError: not a number in (0, 1).
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not 0 < number < 1:
        raise ConfigError(f"{name}={value!r}: must be a fraction strictly between 0 and 1{_suffix(hint)}")
    return number


def _is_out_of_memory(exc: BaseException) -> bool:
    import sys

    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(exc, tf.errors.ResourceExhaustedError):
        return True
    text = str(exc)
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "OOM when allocating", "Out of memory while trying to "
                                   "allocate", "CUDA_ERROR_OUT_OF_MEMORY"))


def out_of_memory_error(exc: BaseException, *, what: str, batch_size) -> ConfigError | None:
    """A `ConfigError` naming a batch size to try when `exc` is the backend's out-of-memory error, else None.

    Recognises TensorFlow's ``ResourceExhaustedError`` (CPU and GPU allocators) and XLA / CUDA
    ``RESOURCE_EXHAUSTED`` messages.

    Args:
        exc: the error `what` raised.
        what: the command, for the message (``"train"``, ``"predict"``).
        batch_size: the batch size in use (None: the recipe's).
    """
    if not _is_out_of_memory(exc):
        return None
    detail = next((line.strip() for line in str(exc).splitlines() if "OOM" in line or "RESOURCE_EXHAUSTED" in line
                   or "Out of memory" in line), str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    detail = detail[:240]
    if batch_size is None:
        fix = "pass a smaller --batch-size than the recipe's (e.g. half of it)"
    elif int(batch_size) > 1:
        fix = f"try --batch-size {max(1, int(batch_size) // 2)} (batch_size={max(1, int(batch_size) // 2)})"
    else:
        fix = ("it does not fit even at batch size 1: use a smaller --image-size / input size, another model, or an "
               "accelerator with more memory")
    size = batch_size if batch_size is not None else "of the recipe"
    return ConfigError(f"{what}: out of memory at batch size {size} ({type(exc).__name__}: {detail}); {fix}")


def reports_out_of_memory(what: str, batch_arg: str = "batch_size"):
    """Decorator: the backend's out-of-memory error escaping the function becomes `out_of_memory_error`'s
    `ConfigError` (chained to the original)."""
    import functools
    import inspect

    def wrap(func):
        signature = inspect.signature(func)

        @functools.wraps(func)
        def guarded(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                bound = signature.bind_partial(*args, **kwargs)
                default = signature.parameters[batch_arg].default if batch_arg in signature.parameters else None
                translated = out_of_memory_error(exc, what=what, batch_size=bound.arguments.get(batch_arg, default))
                if translated is None:
                    raise
                raise translated from exc

        return guarded

    return wrap


def beam_pipeline_options(flags: "Sequence[str] | None"):
    """Beam ``PipelineOptions`` from ``--name=value`` flags (DirectRunner unless ``--runner`` is given); None for
    a plain (non-Beam) run. Used by `prepare --beam` (tfds_hpa) and `predict/embed --beam` (hpa_zoo.infer.beam).

    Raises:
        ConfigError: apache-beam missing, a flag without ``--``, a string instead of a list, an unknown runner.
    """
    if flags is None:
        return None
    if isinstance(flags, str):
        raise ConfigError(f"beam_options={flags!r}: pass a list of flags, e.g. ['--runner=DirectRunner']")
    try:
        from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    except ImportError as exc:
        raise ConfigError(f"building with Apache Beam needs apache-beam ({exc}); install it with "
                          f"`pip install 'hpa-zoo[beam]'` (apache-beam==2.77.0)") from exc
    flags = [str(f) for f in flags]
    bad = [f for f in flags if not f.startswith("--")]
    if bad:
        raise ConfigError(f"beam_options: {bad} are not Beam flags; write them as --name=value, "
                          f"e.g. --runner=DataflowRunner")
    if not any(f.startswith("--runner") for f in flags):
        flags = ["--runner=DirectRunner", *flags]
    options = PipelineOptions(flags)
    runner = options.view_as(StandardOptions).runner
    if isinstance(runner, str) and "." not in runner and runner not in StandardOptions.KNOWN_RUNNER_NAMES:
        raise ConfigError(f"Beam runner {runner!r} is unknown; use one of {StandardOptions.KNOWN_RUNNER_NAMES} "
                          f"(or a runner's full Python path)")
    return options
