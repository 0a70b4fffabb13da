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
        return [_i64(name, value)]
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int or a sequence of ints, got {type(value).__name__}") from None
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name}: expected ints, got {type(v).__name__} in {value!r}")
        out.append(_i64(name, v))
    return out


_I64 = (-(2 ** 63), 2 ** 63 - 1)


def _i64(name, v):
    """`v` as an int the core can take (64-bit), or a ValueError naming the parameter."""
    v = int(v)
    if not _I64[0] <= v <= _I64[1]:
        raise ValueError(f"{name}: expected an integer that fits in 64 bits, got {v}")
    return v


def integer(name, value):
    """One int (not a bool, float, string or None) that fits in 64 bits, or an error naming it.

    Ranges (a positive group count) are checked by the core, whose errors name the parameter.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    return _i64(name, value)


def flag(name, value):
    """A bool (numpy's too, or the ints 0 and 1); a string such as 'False' is a TypeError."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")


def count(name, value, minimum=0):
    """A non-negative int (a thread count, a size), or a clear error naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum or value > 1 << 20:
        raise ValueError(f"{name}: expected an int between {minimum} and {1 << 20}, got {value}")
    return value


def maybe_ints(name, value):
    return None if value is None else ints(name, value)


def array(name, value):
    """A numpy array view of `value` (no copy for arrays and CPU tensors); None stays None.

    Only arrays and array-like tensors (objects with ``__array__``, such as CPU torch tensors) are
    taken; a list or a scalar is a TypeError naming the tensor, not a guess at its dtype.
    """
    if value is None or isinstance(value, np.ndarray):
        return value
    if not hasattr(value, "__array__"):
        raise TypeError(f"{name}: expected a numpy array, got {type(value).__name__}")
    try:
        return np.asarray(value)
    except Exception as e:  # noqa: BLE001 - report as a TypeError naming the tensor
        raise TypeError(f"{name}: expected a numpy array, got {type(value).__name__} ({e})") from None
