"""Argument checks of the DCNv2 ops, TorchScript-compatible, and the output size the fake kernels
(torch.compile, meta tensors) compute before the core runs: the sizes may be symbolic there, so
the formula is written here, on Python ints, rather than asked of the core."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._runtime import _fail

def _is_supported(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 or dtype == torch.float64 or dtype == torch.float16 or dtype == torch.bfloat16


def _check_rank(name: str, t: Tensor, rank: int) -> None:
    if t.dim() != rank:
        _fail(name + ": expected a " + str(rank) + "-D tensor, got " + str(t.dim()) + "-D with shape "
              + str(t.shape))


def _check_tensors(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor],
                   mask: Optional[Tensor]) -> None:
    """torchvision's checks, in its order: ranks and shapes first, then dtypes and devices.

    The messages name the tensor and say what was expected and what came; where torchvision has
    a wording of its own ("the shape of the offset", "mask.shape[1] is not valid"), it is kept.
    """
    _check_rank("input", input, 4)
    _check_rank("offset", offset, 4)
    _check_rank("weight", weight, 4)
    kh, kw = weight.shape[2], weight.shape[3]
    taps = kh * kw
    if taps == 0 or offset.shape[1] == 0 or offset.shape[1] % (2 * taps) != 0:
        _fail("offset: the shape of the offset tensor at dimension 1 is not valid: expected a positive multiple "
              "of 2 * kh * kw = " + str(2 * taps) + ", got offset.shape[1] = " + str(offset.shape[1]))
    groups = offset.shape[1] // (2 * max(taps, 1))
    if weight.shape[1] == 0 or input.shape[1] % weight.shape[1] != 0:
        _fail("weight: expected weight.shape[1] = C / groups to divide the input's C = " + str(input.shape[1])
              + ", got weight shape " + str(weight.shape))
    if offset.shape[0] != input.shape[0]:
        _fail("offset: expected batch " + str(input.shape[0]) + " (the input's), got offset shape "
              + str(offset.shape))
    if mask is not None:
        _check_rank("mask", mask, 4)
        if mask.shape[1] != groups * taps:
            _fail("mask: mask.shape[1] is not valid: expected offset groups * kh * kw = " + str(groups * taps)
                  + ", got mask.shape[1] = " + str(mask.shape[1]))
        if mask.shape[0] != input.shape[0] or mask.shape[2] != offset.shape[2] or mask.shape[3] != offset.shape[3]:
            _fail("mask: expected shape [" + str(input.shape[0]) + ", " + str(groups * taps) + ", "
                  + str(offset.shape[2]) + ", " + str(offset.shape[3]) + "] (the offset's), got " + str(mask.shape))
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            _fail("bias: expected shape [" + str(weight.shape[0]) + "] (Cout), got " + str(bias.shape))
    if not _is_supported(input.dtype):
        _fail("input: expected dtype float16, bfloat16, float32 or float64, got " + str(input.dtype), True)
    _check_like("offset", offset, input)
    _check_like("weight", weight, input)
    if bias is not None:
        _check_like("bias", bias, input)
    if mask is not None:
        _check_like("mask", mask, input)
    if input.device.type != "cpu":
        _fail("input: expected a CPU tensor, got a tensor on " + str(input.device))


def _check_like(name: str, t: Tensor, input: Tensor) -> None:
    """`t` has the input's dtype and is on the CPU."""
    if t.dtype != input.dtype:
        _fail(name + ": expected dtype " + str(input.dtype) + " (the input's), got " + str(t.dtype), True)
    if t.device.type != "cpu":
        _fail(name + ": expected a CPU tensor, got a tensor on " + str(t.device))


def _eager_pair(name: str, v) -> Tuple[int, int]:
    """An int or a pair of ints as a pair (eager calls; TorchScript callers pass pairs)."""
    if isinstance(v, bool):
        _fail(name + ": expected an int or a pair of ints, got bool", True)
    if isinstance(v, int):
        return (v, v)
    try:
        v = tuple(v)
    except TypeError:
        _fail(f"{name}: expected an int or a pair of ints, got {type(v).__name__}", True)
    if len(v) == 1:
        v = v * 2
    if len(v) != 2 or not all(isinstance(e, int) and not isinstance(e, bool) for e in v):
        _fail(f"{name}: expected an int or a pair of ints, got {v!r}")
    return (int(v[0]), int(v[1]))


def _check_conv(stride, padding, dilation, n: int = 2) -> None:
    """The convolution parameters' counts and ranges, as the core checks them: for the fake
    kernels (torch.compile, meta tensors), which compute an output size before the core runs."""
    for name, v, least in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if len(v) != n:
            _fail(f"{name}: expected {n} values, got {len(v)} ({list(v)})")
        for i, e in enumerate(v):
            if e < least:
                what = "a positive integer" if least else "a non-negative integer"
                _fail(f"{name}[{i}]: expected {what}, got {e}")


def _floor_out(size, pad_a, pad_b, k, dil, stride):
    """An output size with pads on both sides, rounded down (torch_npu, DCNv3)."""
    return (size + pad_a + pad_b - (dil * (k - 1) + 1)) // stride + 1


def _out_size(size: int, pad: int, k: int, dil: int, stride: int) -> int:
    """torchvision's output size: C truncation of a negative numerator."""
    num = size + 2 * pad - (dil * (k - 1) + 1)
    q = num // stride if num >= 0 else -((-num) // stride)  # C truncation, as torchvision
    return q + 1
