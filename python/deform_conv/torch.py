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
import ctypes
import math
import os
import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import _core

__all__ = ["deform_conv2d", "DeformConv2d", "npu_deformable_conv2d"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _find_openmp():
    """(GOMP_parallel, omp_get_thread_num) addresses of the OpenMP runtime torch loaded, or None."""
    if "OpenMP" not in torch.__config__.parallel_info().split("ATen parallel backend:")[-1]:
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if len(line.split()) >= 6}
    except OSError:
        return None
    for path in sorted(paths):
        base = os.path.basename(path)
        if not (base.startswith("libgomp") or base.startswith("libiomp")):
            continue
        try:
            lib = ctypes.CDLL(path)  # already loaded: the same library, no second copy
            return (ctypes.cast(lib.GOMP_parallel, ctypes.c_void_p).value,
                    ctypes.cast(lib.omp_get_thread_num, ctypes.c_void_p).value)
        except (OSError, AttributeError):
            continue
    return None


_OPENMP = _find_openmp()
if _OPENMP is not None:
    _core.use_openmp(*_OPENMP, torch.get_num_threads())
else:
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


def _np(name: str, t: Optional[Tensor]):
    """A numpy view of a CPU tensor, any strides, no copy (bfloat16 as its 16-bit pattern)."""
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got a tensor on {t.device}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name}: expected dtype float16, bfloat16, float32 or float64, got {t.dtype}")
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy()
    return t.numpy()


def _back(a, dtype) -> Tensor:
    """The result array as a tensor of `dtype`, sharing its memory."""
    t = torch.from_numpy(a)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def _pair(name, v) -> List[int]:
    if isinstance(v, bool):
        raise TypeError(f"{name}: expected an int or a pair of ints, got bool")
    if isinstance(v, int):
        return [v, v]
    v = list(v)
    if len(v) == 1:
        v = v * 2
    if len(v) != 2 or not all(isinstance(e, int) and not isinstance(e, bool) for e in v):
        raise ValueError(f"{name}: expected an int or a pair of ints, got {v!r}")
    return v


def _check(dtype, **tensors):
    """Every given tensor is a CPU torch.Tensor of `dtype` (the input's), or a clear error.

    The input is checked first and on its own, so an input of an unsupported dtype is blamed, not
    the first tensor that differs from it."""
    first = tensors.get("input")
    if isinstance(first, Tensor) and first.dtype not in _DTYPES:
        raise TypeError(f"input: expected dtype float16, bfloat16, float32 or float64, got {first.dtype}")
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{name}: expected a CPU tensor, got a tensor on {t.device}")
        if t.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} (the input's), got {t.dtype}")


def _out_size(size, pad, k, dil, stride) -> int:
    num = size + 2 * pad - (dil * (k - 1) + 1)
    q = num // stride if num >= 0 else -((-num) // stride)  # C truncation, as torchvision
    return q + 1


# ------------------------------------------------------------------ torchvision

@torch.library.custom_op("deform_conv::deform_conv2d", mutates_args=())
def _dcn(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
         stride: List[int], padding: List[int], dilation: List[int]) -> Tensor:
    with _TorchCall():
        y = _core.torchvision_forward(_np("input", input), _np("offset", offset), _np("weight", weight),
                                      _np("bias", bias), _np("mask", mask), stride, padding, dilation)
    return _back(y, input.dtype)


@_dcn.register_fake
def _(input, offset, weight, bias, mask, stride, padding, dilation):
    ho = _out_size(input.shape[2], padding[0], weight.shape[2], dilation[0], stride[0])
    wo = _out_size(input.shape[3], padding[1], weight.shape[3], dilation[1], stride[1])
    return input.new_empty((input.shape[0], weight.shape[0], ho, wo))


@torch.library.custom_op("deform_conv::deform_conv2d_backward", mutates_args=())
def _dcn_backward(grad: Tensor, input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor],
                  mask: Optional[Tensor], stride: List[int], padding: List[int],
                  dilation: List[int]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    with _TorchCall():
        gi, go, gm, gw, gb = _core.torchvision_backward(
            _np("grad_output", grad), _np("input", input), _np("offset", offset), _np("weight", weight),
            _np("bias", bias), _np("mask", mask), stride, padding, dilation)
    dt = input.dtype
    gm = _back(gm, dt) if gm is not None else input.new_empty((0,))
    gb = _back(gb, dt) if gb is not None else input.new_empty((0,))
    return _back(gi, dt), _back(go, dt), gm, _back(gw, dt), gb


@_dcn_backward.register_fake
def _(grad, input, offset, weight, bias, mask, stride, padding, dilation):
    gm = torch.empty_like(mask) if mask is not None else input.new_empty((0,))
    gb = torch.empty_like(bias) if bias is not None else input.new_empty((0,))
    return torch.empty_like(input), torch.empty_like(offset), gm, torch.empty_like(weight), gb


def _dcn_setup(ctx, inputs, output):
    input, offset, weight, bias, mask, stride, padding, dilation = inputs
    ctx.save_for_backward(input, offset, weight, bias, mask)
    ctx.conv = (stride, padding, dilation)
    ctx.has = (bias is not None, mask is not None)


def _dcn_grad(ctx, grad):
    input, offset, weight, bias, mask = ctx.saved_tensors
    gi, go, gm, gw, gb = _dcn_backward(grad, input, offset, weight, bias, mask, *ctx.conv)
    has_bias, has_mask = ctx.has
    return gi, go, gw, (gb if has_bias else None), (gm if has_mask else None), None, None, None


_dcn.register_autograd(_dcn_grad, setup_context=_dcn_setup)


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask: Optional[Tensor] = None) -> Tensor:
    """``torchvision.ops.deform_conv2d``: same signature, semantics and gradients, on CPU."""
    _check(getattr(input, "dtype", None), input=input, offset=offset, weight=weight, bias=bias, mask=mask)
    return _dcn(input, offset, weight, bias, mask, _pair("stride", stride), _pair("padding", padding),
                _pair("dilation", dilation))


class DeformConv2d(nn.Module):
    """``torchvision.ops.DeformConv2d``: same constructor, parameters, initialisation and state_dict."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True):
        super().__init__()
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = tuple(_pair("kernel_size", kernel_size))
        self.stride = tuple(_pair("stride", stride))
        self.padding = tuple(_pair("padding", padding))
        self.dilation = tuple(_pair("dilation", dilation))
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
    with _TorchCall():
        y, d = _core.npu_forward(_np("input", input), _np("weight", weight), _np("offset", offset),
                                 _np("bias", bias), kernel_size, stride, padding, dilation, groups,
                                 deformable_groups, modulated)
    return _back(y, input.dtype), _back(d, input.dtype)


def _floor_out(size, pad_a, pad_b, k, dil, stride):
    return (size + pad_a + pad_b - (dil * (k - 1) + 1)) // stride + 1


@_npu.register_fake
def _(input, weight, offset, bias, kernel_size, stride, padding, dilation, groups, deformable_groups, modulated):
    kh, kw = weight.shape[2], weight.shape[3]
    ho = _floor_out(input.shape[2], padding[0], padding[1], kh, dilation[2], stride[2])
    wo = _floor_out(input.shape[3], padding[2], padding[3], kw, dilation[3], stride[3])
    n, c = input.shape[0], input.shape[1]
    return input.new_empty((n, weight.shape[0], ho, wo)), input.new_empty((n, c, ho * kh, wo * kw))


@torch.library.custom_op("deform_conv::npu_deformable_conv2dbk", mutates_args=())
def _npu_backward(input: Tensor, grad_output: Tensor, offset_out: Tensor, weight: Tensor, offset: Tensor,
                  kernel_size: List[int], stride: List[int], padding: List[int], dilation: List[int], groups: int,
                  deformable_groups: int, modulated: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    with _TorchCall():
        gi, gw, go, gb = _core.npu_backward(
            _np("input", input), _np("grad_output", grad_output), _np("offset_out", offset_out),
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
    _check(getattr(input, "dtype", None), input=input, weight=weight, offset=offset, bias=bias)
    from ._args import ints
    return _npu(input, weight, offset, bias, ints("kernel_size", kernel_size), ints("stride", stride),
                ints("padding", padding), ints("dilation", dilation), int(groups), int(deformable_groups),
                bool(modulated))
