"""torch drop-ins: ``deform_conv2d`` and ``DeformConv2d`` (torchvision), ``npu_deformable_conv2d`` (torch_npu).

The ops are ``torch.library.custom_op``s with registered autograd formulas and fake kernels, so
they work under ``torch.compile(fullgraph=True)``. CPU tensors of float16, bfloat16, float32 and
float64 come back in the same dtype (half types are sampled and accumulated in float32).

**Threads.** Inside a torch program the engine runs on torch's own intra-op threads: on import,
this module finds the OpenMP runtime torch loaded (``GOMP_parallel`` in its libgomp) and every op
runs its tasks there, the calling thread taking part, with ``torch.get_num_threads()`` workers.
Nothing of ours spins against torch's next op and nothing of torch's against ours. When no such
runtime is found (a torch built without OpenMP), a one-line warning says so and the engine's own
pool is used. Results are bitwise identical either way and for any thread count.

**No hidden copies.** Tensors of any strides (``channels_last``, slices) are read in place;
bfloat16 is passed as its bits (numpy has no bfloat16); outputs are wrapped, not copied.
"""
import math
import os
import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import _core

__all__ = ["deform_conv2d", "DeformConv2d", "npu_deformable_conv2d", "install", "uninstall", "installed",
           "onnx_translations", "DeformConvError", "DeformConvTypeError", "executor", "set_executor"]




def _use_openmp():
    """Registers the OpenMP runtime torch loaded (found by the extension itself); False if none."""
    if "OpenMP" not in torch.__config__.parallel_info().split("ATen parallel backend:")[-1]:
        return False
    return _core.use_openmp(torch.get_num_threads())


if not _use_openmp():
    warnings.warn("deform_conv.torch: torch's OpenMP runtime was not found; the engine runs on its own "
                  "thread pool (deform_conv.set_num_threads), which may contend with torch's threads",
                  RuntimeWarning, stacklevel=2)
_threads = [torch.get_num_threads()]


class _TorchCall:
    """Runs the ``_core`` calls inside it in torch mode: on torch's threads, bfloat16 as bits."""

    def __enter__(self):
        n = torch.get_num_threads()
        if n != _threads[0]:
            _threads[0] = n
            _core.set_host_threads(n)
        self.prev = _core.torch_call(True)

    def __exit__(self, *exc):
        _core.torch_call(self.prev)


def executor() -> str:
    """Where the engine runs for torch ops: "openmp" (torch's threads) or "rayon" (its own pool)."""
    return _core.host_executor()


def set_executor(name: str) -> None:
    """Chooses where torch ops run: "openmp" (torch's threads, the default when found) or "rayon"
    (the engine's own pool, sized by ``deform_conv.set_num_threads``). Results are the same bits."""
    _core.set_host_executor(name)



# ------------------------------------------------------------------ errors


class DeformConvError(RuntimeError, ValueError):
    """A bad shape or parameter: a ``RuntimeError`` as torchvision raises, and a ``ValueError``."""


class DeformConvTypeError(RuntimeError, TypeError):
    """A bad type, dtype or device: a ``RuntimeError`` as torchvision raises, and a ``TypeError``."""


def _fail(msg: str, type_error: bool = False) -> None:
    """Raises `msg` as DeformConvError / DeformConvTypeError (eager) or RuntimeError (TorchScript)."""
    if torch.jit.is_scripting():
        raise RuntimeError(msg)
    else:
        if type_error:
            raise DeformConvTypeError(msg)
        raise DeformConvError(msg)


def _core_call(fn, *args, **kwargs):
    """A ``_core`` call in torch mode, its errors raised as the classes above."""
    try:
        with _TorchCall():
            return fn(*args, **kwargs)
    except TypeError as e:
        raise DeformConvTypeError(str(e)) from None
    except ValueError as e:
        raise DeformConvError(str(e)) from None


# ------------------------------------------------------------------ argument checks (TorchScript-compatible)


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


def _np(name: str, t: Optional[Tensor]):
    """A numpy view of a CPU tensor, any strides, no copy (bfloat16 as its 16-bit pattern)."""
    if t is None:
        return None
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy()
    return t.numpy()


def _back(a, dtype) -> Tensor:
    """The result array as a tensor of `dtype`, sharing its memory."""
    t = torch.from_numpy(a)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


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


def _out_size(size: int, pad: int, k: int, dil: int, stride: int) -> int:
    num = size + 2 * pad - (dil * (k - 1) + 1)
    q = num // stride if num >= 0 else -((-num) // stride)  # C truncation, as torchvision
    return q + 1


# ------------------------------------------------------------------ torchvision


@torch.library.custom_op("deform_conv::deform_conv2d", mutates_args=())
def _dcn(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
         stride: List[int], padding: List[int], dilation: List[int], open_gate: bool = False) -> Tensor:
    y = _core_call(_core.torchvision_forward, _np("input", input), _np("offset", offset), _np("weight", weight),
                   _np("bias", bias), _np("mask", mask), stride, padding, dilation)
    return _back(y, input.dtype)


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
    gi, go, gm, gw, gb = _core_call(
        _core.torchvision_backward, _np("grad_output", grad), _np("input", input), _np("offset", offset),
        _np("weight", weight), _np("bias", bias), _np("mask", mask), stride, padding, dilation,
        gate="open" if open_gate else "per_tap")
    dt = input.dtype
    gm = _back(gm, dt) if gm is not None else input.new_empty((0,))
    gb = _back(gb, dt) if gb is not None else input.new_empty((0,))
    return _back(gi, dt), _back(go, dt), gm, _back(gw, dt), gb


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


def _dcn_grad(ctx, grad):
    input, offset, weight, bias, mask = ctx.saved_tensors
    gi, go, gm, gw, gb = _dcn_backward(grad.contiguous(), input, offset, weight, bias, mask, *ctx.conv)
    has_bias, has_mask = ctx.has
    return gi, go, gw, (gb if has_bias else None), (gm if has_mask else None), None, None, None, None


_dcn.register_autograd(_dcn_grad, setup_context=_dcn_setup)


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

@torch.library.custom_op("deform_conv::npu_deformable_conv2d", mutates_args=())
def _npu(input: Tensor, weight: Tensor, offset: Tensor, bias: Optional[Tensor], kernel_size: List[int],
         stride: List[int], padding: List[int], dilation: List[int], groups: int, deformable_groups: int,
         modulated: bool) -> Tuple[Tensor, Tensor]:
    y, d = _core_call(_core.npu_forward, _np("input", input), _np("weight", weight), _np("offset", offset),
                      _np("bias", bias), kernel_size, stride, padding, dilation, groups, deformable_groups,
                      modulated)
    return _back(y, input.dtype), _back(d, input.dtype)


def _floor_out(size, pad_a, pad_b, k, dil, stride):
    return (size + pad_a + pad_b - (dil * (k - 1) + 1)) // stride + 1


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
    gi, gw, go, gb = _core_call(
        _core.npu_backward, _np("input", input), _np("grad_output", grad_output), _np("offset_out", offset_out),
        _np("weight", weight), _np("offset", offset), kernel_size, stride, padding, dilation, groups,
        deformable_groups, modulated)
    dt = input.dtype
    return _back(gi, dt), _back(gw, dt), _back(go, dt), _back(gb, dt)


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


def _npu_grad(ctx, grad_y, grad_d):
    # Like torch_npu, the gradient flows through the output; the deformed image is an auxiliary
    # output whose gradient is not propagated.
    input, weight, offset, d = ctx.saved_tensors
    gi, gw, go, gb = _npu_backward(input, grad_y.contiguous(), d, weight, offset, *ctx.attrs)
    return gi, gw, go, (gb if ctx.has_bias else None), None, None, None, None, None, None, None


_npu.register_autograd(_npu_grad, setup_context=_npu_setup)


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
    from ._args import flag, integer, ints
    return _npu(input, weight, offset, bias, ints("kernel_size", kernel_size), ints("stride", stride),
                ints("padding", padding), ints("dilation", dilation), integer("groups", groups),
                integer("deformable_groups", deformable_groups), flag("modulated", modulated))


# ------------------------------------------------------------------ install(): torchvision's own ops on our kernel

_installed: list = []


def _tv_groups(input, weight, offset, groups, offset_groups) -> None:
    """The group counts torchvision's op receives explicitly must agree with the shapes, as its own
    kernel checks them (the core derives them from the shapes)."""
    for name, v in (("groups (n_weight_grps)", groups), ("offset_groups (n_offset_grps)", offset_groups)):
        if v < 1:
            _fail(f"{name}: expected a positive integer, got {v}")
    if weight.shape[1] * groups != input.shape[1]:
        _fail(f"groups (n_weight_grps): expected input channels {input.shape[1]} = weight.shape[1] "
              f"{weight.shape[1]} * groups, got groups = {groups}")
    taps2 = 2 * weight.shape[2] * weight.shape[3]
    if offset.shape[1] != offset_groups * taps2:
        _fail(f"offset_groups (n_offset_grps): expected offset channels {offset.shape[1]} = 2 * kh * kw "
              f"{taps2} * offset_groups, got offset_groups = {offset_groups}")


def _tv_forward(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                offset_groups, use_mask):
    _check_tensors(input, offset, weight, bias, mask if use_mask else None)
    _tv_groups(input, weight, offset, groups, offset_groups)
    y = _core_call(_core.torchvision_forward, _np("input", input), _np("offset", offset), _np("weight", weight),
                   _np("bias", bias), _np("mask", mask) if use_mask else None, [stride_h, stride_w],
                   [pad_h, pad_w], [dil_h, dil_w])
    return _back(y, input.dtype)


def _tv_backward(grad, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                 offset_groups, use_mask):
    _tv_groups(input, weight, offset, groups, offset_groups)
    gi, go, gm, gw, gb = _core_call(
        _core.torchvision_backward, _np("grad_output", grad.contiguous()), _np("input", input),
        _np("offset", offset), _np("weight", weight), _np("bias", bias), _np("mask", mask) if use_mask else None,
        [stride_h, stride_w], [pad_h, pad_w], [dil_h, dil_w])
    dt = input.dtype
    gm = _back(gm, dt) if gm is not None else torch.zeros_like(mask)
    return _back(gi, dt), _back(gw, dt), _back(go, dt), gm, _back(gb, dt)


def install() -> None:
    """Runs torchvision's own deformable convolution on this package's CPU kernel, for the whole
    process: ``torchvision.ops.deform_conv2d``, ``torchvision.ops.DeformConv2d``,
    ``torch.ops.torchvision.deform_conv2d``, models already built and models already scripted.

    Our forward and backward become the CPU kernels of ``torchvision::deform_conv2d`` and
    ``torchvision::_deform_conv2d_backward``; torchvision's autograd, argument checks and every
    other device stay its own. The one line that speeds up an existing model (mmdet, BiRefNet, ...).
    Idempotent; :func:`uninstall` restores torchvision's kernels.
    """
    if _installed:
        return
    import torchvision  # noqa: F401  (registers the torchvision ops)

    lib = torch.library.Library("torchvision", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel": that is the point
        lib.impl("deform_conv2d", _tv_forward, "CPU")
        lib.impl("_deform_conv2d_backward", _tv_backward, "CPU")
    _installed.append(lib)


def uninstall() -> None:
    """Restores torchvision's own CPU kernels (undoes :func:`install`)."""
    while _installed:
        _installed.pop()._destroy()


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return bool(_installed)


# ------------------------------------------------------------------ ONNX export


def _onnx_attrs(input_shape, weight_shape, offset_channels, stride, padding, dilation):
    c, cg = input_shape[1], weight_shape[1]
    taps = weight_shape[2] * weight_shape[3]
    return dict(group=c // cg, offset_group=offset_channels // (2 * taps), kernel_shape=list(weight_shape[2:]),
                pads=[padding[0], padding[1], padding[0], padding[1]], strides=list(stride),
                dilations=list(dilation))


def _register_onnx_symbolics():
    """The TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): our op and
    torchvision's become the standard ``DeformConv`` node (opset 19)."""
    try:
        from torch.onnx import register_custom_op_symbolic, symbolic_helper as sh
    except ImportError:  # pragma: no cover - torch without the TorchScript exporter
        return

    def emit(g, input, weight, offset, bias, mask, stride, padding, dilation):
        shapes = [sh._get_tensor_sizes(t) for t in (input, weight, offset)]
        if any(s is None or any(d is None for d in s[1:]) for s in shapes):
            raise RuntimeError("DeformConv export: the channel and kernel sizes of input, weight and offset must be "
                               "static")
        a = _onnx_attrs(shapes[0], shapes[1], shapes[2][1], stride, padding, dilation)
        if bias is None or sh._is_none(bias):
            bias = g.op("Constant", value_t=torch.zeros(shapes[1][0]))
        ins = [input, weight, offset, bias] + ([] if mask is None or sh._is_none(mask) else [mask])
        return g.op("DeformConv", *ins, dilations_i=a["dilations"], group_i=a["group"],
                    kernel_shape_i=a["kernel_shape"], offset_group_i=a["offset_group"], pads_i=a["pads"],
                    strides_i=a["strides"])

    @sh.parse_args("v", "v", "v", "v", "v", "is", "is", "is", "b")
    def ours(g, input, offset, weight, bias, mask, stride, padding, dilation, open_gate):
        return emit(g, input, weight, offset, bias, mask, stride, padding, dilation)

    @sh.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
    def torchvisions(g, input, weight, offset, mask, bias, sh_, sw, ph, pw, dh, dw, groups, offset_groups, use_mask):
        return emit(g, input, weight, offset, bias, mask if use_mask else None, (sh_, sw), (ph, pw), (dh, dw))

    register_custom_op_symbolic("deform_conv::deform_conv2d", ours, 19)
    register_custom_op_symbolic("torchvision::deform_conv2d", torchvisions, 19)


_register_onnx_symbolics()


def onnx_translations() -> dict:
    """Translations for the dynamo exporter:
    ``torch.onnx.export(model, args, f, opset_version=19, custom_translation_table=onnx_translations())``.
    Our op (and torchvision's, after :func:`install` or not) become the standard ``DeformConv``.
    Needs ``onnxscript``.
    """
    from onnxscript import opset19 as op

    def _shape(v):
        return [int(d) for d in v.shape]

    def ours(input, offset, weight, bias=None, mask=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
             open_gate=False):
        a = _onnx_attrs(_shape(input), _shape(weight), _shape(offset)[1], stride, padding, dilation)
        return op.DeformConv(input, weight, offset, bias, mask, dilations=a["dilations"], group=a["group"],
                             kernel_shape=a["kernel_shape"], offset_group=a["offset_group"], pads=a["pads"],
                             strides=a["strides"])

    def torchvisions(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                     offset_groups, use_mask):
        a = _onnx_attrs(_shape(input), _shape(weight), _shape(offset)[1], (stride_h, stride_w), (pad_h, pad_w),
                        (dil_h, dil_w))
        return op.DeformConv(input, weight, offset, bias, mask if use_mask else None, dilations=a["dilations"],
                             group=a["group"], kernel_shape=a["kernel_shape"], offset_group=a["offset_group"],
                             pads=a["pads"], strides=a["strides"])

    table = {torch.ops.deform_conv.deform_conv2d.default: ours}
    try:
        import torchvision  # noqa: F401
        table[torch.ops.torchvision.deform_conv2d.default] = torchvisions
    except ImportError:  # pragma: no cover
        pass
    return table


from .dcnv3_torch import dcnv3_core, dcnv3_core_pytorch, dcnv3_function, dcnv4, dcnv4_function  # noqa: E402,F401

__all__ += ["dcnv3_core_pytorch", "dcnv3_core", "dcnv3_function", "dcnv4_function", "dcnv4"]

from .msda_torch import ms_deform_attn, multi_scale_deformable_attn_pytorch  # noqa: E402,F401

__all__ += ["ms_deform_attn", "multi_scale_deformable_attn_pytorch"]
