"""DCNv3 (InternImage) and DCNv4 on torch tensors: custom ops with autograd, fake kernels
(torch.compile) and TorchScript, on this package's CPU engine. Imported by ``deform_conv.torch``.

* ``dcnv3_core_pytorch(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
  dilation_h, dilation_w, group, group_channels, offset_scale, remove_center=0)``: InternImage's
  CPU fallback's signature, computed as its CUDA kernel (``pad_h`` pads H, ``pad_w`` pads W);
* ``dcnv3_function(input, offset, mask, kernel_h, ..., offset_scale, im2col_step, remove_center=0)``:
  ``DCNv3Function.apply``'s signature (``im2col_step`` accepted, not used);
* ``dcnv4_function(input, offset_mask, kernel_h, ..., offset_scale, im2col_step, remove_center=0)``:
  ``DCNv4Function.apply``'s (no softmax inside, as DCNv4's default).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import _core
from ._checks import _check_like, _check_rank, _floor_out, _is_supported
from ._runtime import _back, _core_call, _fail, _np, _plain, _wants_grad

__all__ = ["dcnv3_core_pytorch", "dcnv3_core", "dcnv3_function", "dcnv4_function", "dcnv4"]


def _attrs(ints: List[int], offset_scale: float, remove_center: bool):
    kh, kw, sh, sw, ph, pw, dh, dw, g, gc = ints
    return ((kh, kw), (sh, sw), (ph, pw), (dh, dw), g, gc, offset_scale, remove_center)


def _forward(input: Tensor, offset: Tensor, mask: Optional[Tensor], ints: List[int], offset_scale: float,
             remove_center: bool) -> Tensor:
    y = _core_call(_core.dcnv3_forward, _np("input", input), _np("offset", offset), _np("mask", mask),
                   _attrs(ints, offset_scale, remove_center))
    return _back(y, input.dtype)


def _backward(grad: Tensor, input: Tensor, offset: Tensor, mask: Optional[Tensor], ints: List[int],
              offset_scale: float, remove_center: bool) -> Tuple[Tensor, Tensor, Tensor]:
    gs = _core_call(_core.dcnv3_backward, _np("grad_output", grad), _np("input", input), _np("offset", offset),
                    _np("mask", mask), _attrs(ints, offset_scale, remove_center))
    dt = input.dtype
    gm = _back(gs[2], dt) if mask is not None else input.new_empty((0,))
    return _back(gs[0], dt), _back(gs[1], dt), gm


@torch.library.custom_op("deform_conv::dcnv3", mutates_args=())
def _dcnv3(input: Tensor, offset: Tensor, mask: Optional[Tensor], ints: List[int], offset_scale: float,
           remove_center: bool) -> Tensor:
    return _forward(input, offset, mask, ints, offset_scale, remove_center)


@_dcnv3.register_fake
def _(input, offset, mask, ints, offset_scale, remove_center):
    kh, kw, sh, sw, ph, pw, dh, dw, g, gc = ints
    for name, v in (("stride_h", sh), ("stride_w", sw), ("dilation_h", dh), ("dilation_w", dw),
                    ("kernel_h", kh), ("kernel_w", kw), ("group", g), ("group_channels", gc)):
        if v < 1:
            _fail(f"{name}: expected a positive integer, got {v}")
    ho = _floor_out(input.shape[1], ph, ph, kh, dh, sh)
    wo = _floor_out(input.shape[2], pw, pw, kw, dw, sw)
    return input.new_empty((input.shape[0], ho, wo, input.shape[3]))


@torch.library.custom_op("deform_conv::dcnv3_backward", mutates_args=())
def _dcnv3_backward(grad: Tensor, input: Tensor, offset: Tensor, mask: Optional[Tensor], ints: List[int],
                    offset_scale: float, remove_center: bool) -> Tuple[Tensor, Tensor, Tensor]:
    return _backward(grad, input, offset, mask, ints, offset_scale, remove_center)


@_dcnv3_backward.register_fake
def _(grad, input, offset, mask, ints, offset_scale, remove_center):
    gm = torch.empty_like(mask) if mask is not None else input.new_empty((0,))
    return torch.empty_like(input), torch.empty_like(offset), gm


def _setup(ctx, inputs, output):
    input, offset, mask, ints, offset_scale, remove_center = inputs
    ctx.save_for_backward(input, offset, mask)
    ctx.attrs = (ints, offset_scale, remove_center)


def _grads(ctx, grad, backward):
    """The gradients from `_setup`'s context, through `backward` (the custom backward op, or
    `_backward` itself on the eager path)."""
    input, offset, mask = ctx.saved_tensors
    gi, go, gm = backward(grad.contiguous(), input, offset, mask, *ctx.attrs)
    return gi, go, (gm if mask is not None else None), None, None, None


def _grad(ctx, grad):
    return _grads(ctx, grad, _dcnv3_backward)


_dcnv3.register_autograd(_grad, setup_context=_setup)


class _Eager(torch.autograd.Function):
    """The op in plain eager mode with autograd (`_run`): the custom op's forward and gradient,
    without the dispatcher's layers."""

    @staticmethod
    def forward(ctx, *inputs):
        _setup(ctx, inputs, None)
        return _forward(*inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return _grads(ctx, grad, _backward)


def _run(input: Tensor, offset: Tensor, mask: Optional[Tensor], ints: List[int], offset_scale: float,
         remove_center: bool) -> Tensor:
    """The op: straight to the engine in plain eager mode (`_plain`), else the custom op."""
    if _plain(input, offset, mask):
        if _wants_grad(input, offset, mask):
            return _Eager.apply(input, offset, mask, ints, offset_scale, remove_center)
        return _forward(input, offset, mask, ints, offset_scale, remove_center)
    return _dcnv3(input, offset, mask, ints, offset_scale, remove_center)


def _run_backward(grad: Tensor, input: Tensor, offset: Tensor, mask: Optional[Tensor], ints: List[int],
                  offset_scale: float, remove_center: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """The gradients (for the compiled extensions' names): straight to the engine in plain eager
    mode, else the custom op."""
    if _plain(grad, input, offset, mask):
        return _backward(grad, input, offset, mask, ints, offset_scale, remove_center)
    return _dcnv3_backward(grad, input, offset, mask, ints, offset_scale, remove_center)


def _check(input: Tensor, offset: Tensor, mask: Optional[Tensor]) -> None:
    for name, t in (("input", input), ("offset", offset), ("mask", mask)):
        if t is not None and not isinstance(t, Tensor):
            _fail(f"{name}: expected a torch.Tensor, got {type(t).__name__}", True)
    for name, t in (("input", input), ("offset", offset), ("mask", mask)):
        if t is not None:
            _check_rank(name, t, 4)
    if not _is_supported(input.dtype):
        _fail(f"input: expected dtype float16, bfloat16, float32 or float64, got {input.dtype}", True)
    if input.device.type != "cpu":
        _fail("input: expected a CPU tensor, got a tensor on " + str(input.device))
    for name, t in (("offset", offset), ("mask", mask)):
        if t is not None:
            _check_like(name, t, input)


def _ints(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
          group_channels) -> List[int]:
    values = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels)
    # Plain ints of 64 bits (the usual call) as they are; the core checks the ranges.
    if all(type(v) is int and -(1 << 63) <= v < 1 << 63 for v in values):
        return list(values)
    from .._args import integer
    names = ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w",
             "group", "group_channels")
    return [integer(n, int(v) if isinstance(v, Tensor) else v) for n, v in zip(names, values)]


def _scale(offset_scale) -> float:
    if isinstance(offset_scale, bool) or not isinstance(offset_scale, (int, float)):
        raise TypeError(f"offset_scale: expected a number, got {type(offset_scale).__name__}")
    return float(offset_scale)


def dcnv3_core_pytorch(input: Tensor, offset: Tensor, mask: Tensor, kernel_h: int, kernel_w: int, stride_h: int,
                       stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int,
                       group_channels: int, offset_scale: float, remove_center=0) -> Tensor:
    """DCNv3 on channels-last tensors: input [N, H, W, G*D], offset [N, Ho, Wo, G*P*2], mask
    [N, Ho, Wo, G*P] -> [N, Ho, Wo, G*D]; differentiable in input, offset and mask."""
    _check(input, offset, mask)
    return _run(input, offset, mask, _ints(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                                           dilation_w, group, group_channels),
                _scale(offset_scale), bool(remove_center))


def dcnv3_function(input: Tensor, offset: Tensor, mask: Tensor, kernel_h: int, kernel_w: int, stride_h: int,
                   stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int,
                   group_channels: int, offset_scale: float, im2col_step: int = 256, remove_center=0) -> Tensor:
    """``DCNv3Function.apply``'s argument order (``im2col_step`` is accepted and not used)."""
    return dcnv3_core_pytorch(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                              dilation_h, dilation_w, group, group_channels, offset_scale, remove_center)


def dcnv4_function(input: Tensor, offset_mask: Tensor, kernel_h: int, kernel_w: int, stride_h: int, stride_w: int,
                   pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int, group_channels: int,
                   offset_scale: float, im2col_step: int = 256, remove_center=0) -> Tensor:
    """``DCNv4Function.apply``'s argument order: input [N, H, W, G*D], offset_mask
    [N, Ho, Wo, >= G*P*3] (per group P (x, y) pairs then P masks; padding ignored)."""
    _check(input, offset_mask, None)
    return _run(input, offset_mask, None, _ints(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                                dilation_h, dilation_w, group, group_channels),
                _scale(offset_scale), bool(remove_center))


#: ``dcnv3_core_pytorch``'s positional signature under the short name.
dcnv3_core = dcnv3_core_pytorch


def dcnv4(input: Tensor, offset_mask: Tensor, kernel_h: int, kernel_w: int, stride_h: int, stride_w: int,
          pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int, group_channels: int,
          offset_scale: float, remove_center=0) -> Tensor:
    """DCNv4 without ``im2col_step``: :func:`dcnv4_function`'s other arguments, in its order."""
    return dcnv4_function(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                          dilation_w, group, group_channels, offset_scale, 256, remove_center)
