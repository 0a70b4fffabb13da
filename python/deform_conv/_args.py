"""Argument normalisation shared by the Python front ends (the core does the validation)."""
import numbers

import numpy as np


def ints(name, value):
    """An int or a sequence of ints as a list of ints; anything else is a TypeError.

    Lengths and ranges are checked by the core, whose errors name the parameter.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an int or a sequence of ints, got bool")
    if isinstance(value, numbers.Integral):
        return [int(value)]
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int or a sequence of ints, got {type(value).__name__}") from None
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name}: expected ints, got {type(v).__name__} in {value!r}")
        out.append(int(v))
    return out


def maybe_ints(name, value):
    return None if value is None else ints(name, value)


def array(name, value):
    """A numpy array view of `value` (no copy for arrays and CPU tensors); None stays None."""
    if value is None or isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except Exception as e:  # noqa: BLE001 - report as a TypeError naming the tensor
        raise TypeError(f"{name}: expected an array, got {type(value).__name__} ({e})") from None
