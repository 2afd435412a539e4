"""Argument sanity for the public entry points: counts, sizes and fractions that cannot work raise `ConfigError`.

One place for the wording, so ``batch_size=0`` reads the same from ``train``, ``predict``, ``finetune``, ``folds``
or ``synth``: ``"<name>=<value>: must be a positive integer"`` plus the entry point's hint.
"""
from __future__ import annotations

import numbers

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
