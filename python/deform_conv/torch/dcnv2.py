"""DCNv2 as torch ops: torchvision's ``deform_conv2d`` and ``DeformConv2d``, torch_npu's
``npu_deformable_conv2d``; custom ops with autograd and fake kernels."""
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .. import _core
from ._checks import (_check_conv, _check_like, _check_rank, _check_tensors, _eager_pair, _floor_out, _is_supported,
                      _out_size)
from ._runtime import _back, _core_call, _fail, _np, _plain, _wants_grad

def _dcn_forward(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
                 stride: List[int], padding: List[int], dilation: List[int]) -> Tensor:
    y = _core_call(_core.torchvision_forward, (_np("input", input), _np("offset", offset), _np("weight", weight),
                                               _np("bias", bias), _np("mask", mask)), (stride, padding, dilation))
    return _back(y, input.dtype)


def _dcn_gradients(grad: Tensor, input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor],
                   mask: Optional[Tensor], stride: List[int], padding: List[int], dilation: List[int],
                   open_gate: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    gi, go, gm, gw, gb = _core_call(
        _core.torchvision_backward, _np("grad_output", grad),
        (_np("input", input), _np("offset", offset), _np("weight", weight), _np("bias", bias), _np("mask", mask)),
        (stride, padding, dilation), gate="open" if open_gate else "per_tap")
    dt = input.dtype
    gm = _back(gm, dt) if gm is not None else input.new_empty((0,))
    gb = _back(gb, dt) if gb is not None else input.new_empty((0,))
    return _back(gi, dt), _back(go, dt), gm, _back(gw, dt), gb


@torch.library.custom_op("deform_conv::deform_conv2d", mutates_args=())
def _dcn(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
         stride: List[int], padding: List[int], dilation: List[int], open_gate: bool = False) -> Tensor:
    return _dcn_forward(input, offset, weight, bias, mask, stride, padding, dilation)


@_dcn.register_fake
def _(input, offset, weight, bias, mask, stride, padding, dilation, open_gate=False):
    _check_conv(stride, padding, dilation)
    ho = _out_size(input.shape[2], padding[0], weight.shape[2], dilation[0], stride[0])
    wo = _out_size(input.shape[3], padding[1], weight.shape[3], dilation[1], stride[1])
    return input.new_empty((input.shape[0], weight.shape[0], ho, wo))


@torch.library.custom_op("deform_conv::deform_conv2d_backward", mutates_args=())
def _dcn_backward(grad: Tensor, input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor],
                  mask: Optional[Tensor], stride: List[int], padding: List[int], dilation: List[int],
                  open_gate: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _dcn_gradients(grad, input, offset, weight, bias, mask, stride, padding, dilation, open_gate)


@_dcn_backward.register_fake
def _(grad, input, offset, weight, bias, mask, stride, padding, dilation, open_gate=False):
    gm = torch.empty_like(mask) if mask is not None else input.new_empty((0,))
    gb = torch.empty_like(bias) if bias is not None else input.new_empty((0,))
    return torch.empty_like(input), torch.empty_like(offset), gm, torch.empty_like(weight), gb


def _dcn_setup(ctx, inputs, output):
    input, offset, weight, bias, mask, stride, padding, dilation, open_gate = inputs
    ctx.save_for_backward(input, offset, weight, bias, mask)
    ctx.conv = (stride, padding, dilation, open_gate)
    ctx.has = (bias is not None, mask is not None)


def _dcn_grads(ctx, grad, gradients):
    """The gradients of input, offset, weight, bias and mask from `_dcn_setup`'s context, through
    `gradients` (the custom backward op, or `_dcn_gradients` itself on the eager path)."""
    input, offset, weight, bias, mask = ctx.saved_tensors
    gi, go, gm, gw, gb = gradients(grad.contiguous(), input, offset, weight, bias, mask, *ctx.conv)
    has_bias, has_mask = ctx.has
    return gi, go, gw, (gb if has_bias else None), (gm if has_mask else None)


def _dcn_grad(ctx, grad):
    return _dcn_grads(ctx, grad, _dcn_backward) + (None,) * 4


_dcn.register_autograd(_dcn_grad, setup_context=_dcn_setup)


class _DcnEager(torch.autograd.Function):
    """``deform_conv2d`` in plain eager mode with autograd: the custom op's forward and gradient,
    without the dispatcher's layers (`_runtime._plain`)."""

    @staticmethod
    def forward(ctx, input, offset, weight, bias, mask, stride, padding, dilation):
        _dcn_setup(ctx, (input, offset, weight, bias, mask, stride, padding, dilation, False), None)
        return _dcn_forward(input, offset, weight, bias, mask, stride, padding, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return _dcn_grads(ctx, grad, _dcn_gradients) + (None,) * 3


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  stride: Tuple[int, int] = (1, 1), padding: Tuple[int, int] = (0, 0),
                  dilation: Tuple[int, int] = (1, 1), mask: Optional[Tensor] = None) -> Tensor:
    """``torchvision.ops.deform_conv2d``: same signature, semantics and gradients, on CPU.

    TorchScript-compatible (``torch.jit.script`` a module or function calling it; pass the pairs
    as tuples there). Bad shapes raise :class:`DeformConvError` (a ``RuntimeError`` and a
    ``ValueError``), bad dtypes :class:`DeformConvTypeError`; shapes are checked first.
    """
    if not torch.jit.is_scripting():
        if not isinstance(input, Tensor):
            _fail(f"input: expected a torch.Tensor, got {type(input).__name__}", True)
        for name, t in (("offset", offset), ("weight", weight), ("bias", bias), ("mask", mask)):
            if t is not None and not isinstance(t, Tensor):
                _fail(f"{name}: expected a torch.Tensor, got {type(t).__name__}", True)
        stride = _eager_pair("stride", stride)
        padding = _eager_pair("padding", padding)
        dilation = _eager_pair("dilation", dilation)
    _check_tensors(input, offset, weight, bias, mask)
    if not torch.jit.is_scripting():
        if _plain(input, offset, weight, bias, mask):
            conv = ([stride[0], stride[1]], [padding[0], padding[1]], [dilation[0], dilation[1]])
            if _wants_grad(input, offset, weight, bias, mask):
                return _DcnEager.apply(input, offset, weight, bias, mask, *conv)
            return _dcn_forward(input, offset, weight, bias, mask, *conv)
    return torch.ops.deform_conv.deform_conv2d(input, offset, weight, bias, mask, [stride[0], stride[1]],
                                               [padding[0], padding[1]], [dilation[0], dilation[1]], False)


class DeformConv2d(nn.Module):
    """``torchvision.ops.DeformConv2d``: same constructor, parameters, initialisation and state_dict;
    scriptable with ``torch.jit.script``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True):
        super().__init__()
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _eager_pair("kernel_size", kernel_size)
        self.stride = _eager_pair("stride", stride)
        self.padding = _eager_pair("padding", padding)
        self.dilation = _eager_pair("dilation", dilation)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return deform_conv2d(input, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, mask=mask)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}, dilation={self.dilation}")
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


# ------------------------------------------------------------------ torch_npu

def _npu_forward(input: Tensor, weight: Tensor, offset: Tensor, bias: Optional[Tensor], kernel_size: List[int],
                 stride: List[int], padding: List[int], dilation: List[int], groups: int, deformable_groups: int,
                 modulated: bool) -> Tuple[Tensor, Tensor]:
    y, d = _core_call(_core.npu_forward,
                      (_np("input", input), _np("weight", weight), _np("offset", offset), _np("bias", bias)),
                      (kernel_size, stride, padding, dilation, groups, deformable_groups, modulated))
    return _back(y, input.dtype), _back(d, input.dtype)


def _npu_gradients(input: Tensor, grad_output: Tensor, offset_out: Tensor, weight: Tensor, offset: Tensor,
                   kernel_size: List[int], stride: List[int], padding: List[int], dilation: List[int], groups: int,
                   deformable_groups: int, modulated: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    gi, gw, go, gb = _core_call(
        _core.npu_backward,
        (_np("input", input), _np("grad_output", grad_output), _np("offset_out", offset_out), _np("weight", weight),
         _np("offset", offset)),
        (kernel_size, stride, padding, dilation, groups, deformable_groups, modulated))
    dt = input.dtype
    return _back(gi, dt), _back(gw, dt), _back(go, dt), _back(gb, dt)


@torch.library.custom_op("deform_conv::npu_deformable_conv2d", mutates_args=())
def _npu(input: Tensor, weight: Tensor, offset: Tensor, bias: Optional[Tensor], kernel_size: List[int],
         stride: List[int], padding: List[int], dilation: List[int], groups: int, deformable_groups: int,
         modulated: bool) -> Tuple[Tensor, Tensor]:
    return _npu_forward(input, weight, offset, bias, kernel_size, stride, padding, dilation, groups,
                        deformable_groups, modulated)


@_npu.register_fake
def _(input, weight, offset, bias, kernel_size, stride, padding, dilation, groups, deformable_groups, modulated):
    _check_conv(stride, padding, dilation, 4)
    kh, kw = weight.shape[2], weight.shape[3]
    ho = _floor_out(input.shape[2], padding[0], padding[1], kh, dilation[2], stride[2])
    wo = _floor_out(input.shape[3], padding[2], padding[3], kw, dilation[3], stride[3])
    n, c = input.shape[0], input.shape[1]
    return input.new_empty((n, weight.shape[0], ho, wo)), input.new_empty((n, c, ho * kh, wo * kw))


@torch.library.custom_op("deform_conv::npu_deformable_conv2dbk", mutates_args=())
def _npu_backward(input: Tensor, grad_output: Tensor, offset_out: Tensor, weight: Tensor, offset: Tensor,
                  kernel_size: List[int], stride: List[int], padding: List[int], dilation: List[int], groups: int,
                  deformable_groups: int, modulated: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _npu_gradients(input, grad_output, offset_out, weight, offset, kernel_size, stride, padding, dilation,
                          groups, deformable_groups, modulated)


@_npu_backward.register_fake
def _(input, grad_output, offset_out, weight, offset, kernel_size, stride, padding, dilation, groups,
      deformable_groups, modulated):
    return (torch.empty_like(input), torch.empty_like(weight), torch.empty_like(offset),
            input.new_empty((weight.shape[0],)))


def _npu_setup(ctx, inputs, output):
    input, weight, offset, bias, *attrs = inputs
    ctx.save_for_backward(input, weight, offset, output[1])
    ctx.attrs = attrs
    ctx.has_bias = bias is not None


def _npu_grads(ctx, grad_y, gradients):
    """The gradients of every input from `_npu_setup`'s context, through `gradients` (the custom
    backward op, or `_npu_gradients` itself on the eager path). Like torch_npu, the gradient
    flows through the output; the deformed image is an auxiliary output whose gradient is not
    propagated."""
    input, weight, offset, d = ctx.saved_tensors
    gi, gw, go, gb = gradients(input, grad_y.contiguous(), d, weight, offset, *ctx.attrs)
    return (gi, gw, go, (gb if ctx.has_bias else None)) + (None,) * len(ctx.attrs)


def _npu_grad(ctx, grad_y, grad_d):
    return _npu_grads(ctx, grad_y, _npu_backward)


_npu.register_autograd(_npu_grad, setup_context=_npu_setup)


class _NpuEager(torch.autograd.Function):
    """``npu_deformable_conv2d`` in plain eager mode with autograd: the custom op's forward and
    gradient (through the output only), without the dispatcher's layers (`_runtime._plain`)."""

    @staticmethod
    def forward(ctx, input, weight, offset, bias, *attrs):
        y, d = _npu_forward(input, weight, offset, bias, *attrs)
        _npu_setup(ctx, (input, weight, offset, bias, *attrs), (y, d))
        return y, d

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_d):
        return _npu_grads(ctx, grad_y, _npu_gradients)


def npu_deformable_conv2d(input: Tensor, weight: Tensor, offset: Tensor, bias: Optional[Tensor], kernel_size,
                          stride, padding, dilation=(1, 1, 1, 1), groups: int = 1, deformable_groups: int = 1,
                          modulated: bool = True) -> Tuple[Tensor, Tensor]:
    """``torch_npu.npu_deformable_conv2d``: returns (output, deformable_offset), autograd through the output
    with torch_npu's gradient rule (zero gradients for samples outside (-1, H) x (-1, W))."""
    for name, t in (("input", input), ("weight", weight), ("offset", offset), ("bias", bias)):
        if t is not None and not isinstance(t, Tensor):
            _fail(f"{name}: expected a torch.Tensor, got {type(t).__name__}", True)
    for name, t in (("input", input), ("weight", weight), ("offset", offset)):
        _check_rank(name, t, 4)
    if not _is_supported(input.dtype):
        _fail(f"input: expected dtype float16, bfloat16, float32 or float64, got {input.dtype}", True)
    for name, t in (("weight", weight), ("offset", offset), ("bias", bias)):
        if t is not None:
            _check_like(name, t, input)
    from .._args import flag, integer, ints
    attrs = (ints("kernel_size", kernel_size), ints("stride", stride), ints("padding", padding),
             ints("dilation", dilation), integer("groups", groups), integer("deformable_groups", deformable_groups),
             flag("modulated", modulated))
    if _plain(input, weight, offset, bias):
        if _wants_grad(input, weight, offset, bias):
            return _NpuEager.apply(input, weight, offset, bias, *attrs)
        return _npu_forward(input, weight, offset, bias, *attrs)
    return _npu(input, weight, offset, bias, *attrs)
