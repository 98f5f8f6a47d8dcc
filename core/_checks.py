"""Argument checks shared by the pure control modules."""

from __future__ import annotations

import operator


def check_int(value: object, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, else ValueError naming ``name``.

    numpy integers pass (they come from the simulator); bools and floats do not (``True`` retries or
    2.5 replicas is a bug, not a rounding question).
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number
