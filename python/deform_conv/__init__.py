"""deform_conv: exact, fast deformable convolution (DCN v1 and v2) for CPUs.

numpy API (float16, float32, float64; any strides)::

    import deform_conv as dc
    y = dc.deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None)
    g = dc.deform_conv2d_backward(grad_output, input, offset, weight, bias=None, mask=None, ...)
    g.input, g.offset, g.mask, g.weight, g.bias

Conventions: ``dc.onnx.deform_conv``, ``dc.mindspore.deformable_conv2d``,
``dc.npu.npu_deformable_conv2d`` / ``npu_deformable_conv2dbk``; torch drop-ins in
``deform_conv.torch`` (imported on use). Offsets of torchvision / ONNX are interleaved
``(dy, dx)`` per (group, tap); MindSpore / torch_npu pack ``[all dx | all dy | all mask]``.
Bad input raises ``ValueError`` (shapes, values) or ``TypeError`` (types, dtypes).
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _core
from ._args import array as _array
from ._args import ints as _ints
from ._args import count as _count
from ._core import active_isa, num_threads, supported_isas

__all__ = [
    "deform_conv2d", "deform_conv2d_backward", "Gradients",
    "interleaved_to_packed", "packed_to_interleaved",
    "nchw_to_nhwc", "nhwc_to_nchw", "oihw_to_hwcn", "hwcn_to_oihw",
    "set_num_threads", "num_threads", "active_isa", "supported_isas",
    "onnx", "mindspore", "npu",
    "dcnv3", "dcnv3_backward", "dcnv4", "dcnv4_backward",
    "ms_deform_attn", "ms_deform_attn_backward",
]


@dataclass
class Gradients:
    """Gradients of :func:`deform_conv2d`; ``mask`` / ``bias`` are None when not given."""
    input: np.ndarray
    offset: np.ndarray
    mask: Optional[np.ndarray]
    weight: np.ndarray
    bias: Optional[np.ndarray]


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None,
                  *, backend="engine"):
    """torchvision's ``deform_conv2d`` on numpy arrays.

    Shapes: input [N, C, H, W], offset [N, 2*G*kh*kw, Ho, Wo] (interleaved dy, dx), weight
    [Cout, C/groups, kh, kw], bias [Cout], mask [N, G*kh*kw, Ho, Wo] (None = DCN v1).
    ``backend``: "engine" (default), "reference" (the plain oracle) or "engine:<isa>".
    """
    return _core.torchvision_forward(
        (_array("input", input), _array("offset", offset), _array("weight", weight), _array("bias", bias),
         _array("mask", mask)), (_ints("stride", stride), _ints("padding", padding), _ints("dilation", dilation)),
        backend)


def deform_conv2d_backward(grad_output, input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                           dilation=(1, 1), mask=None, *, backend="engine"):
    """Every gradient of :func:`deform_conv2d` for ``grad_output`` [N, Cout, Ho, Wo]."""
    gi, go, gm, gw, gb = _core.torchvision_backward(
        _array("grad_output", grad_output),
        (_array("input", input), _array("offset", offset), _array("weight", weight), _array("bias", bias),
         _array("mask", mask)), (_ints("stride", stride), _ints("padding", padding), _ints("dilation", dilation)),
        backend)
    return Gradients(gi, go, gm, gw, gb)


def _dcn3_attrs(kernel_size, stride, pad, dilation, group, group_channels, offset_scale, remove_center):
    """The attribute tuple the core takes; kernel/stride/pad/dilation as an int or (h, w)."""
    from ._args import flag, integer

    def pair(name, v):
        v = _ints(name, v)
        if len(v) == 1:
            v = v * 2
        if len(v) != 2:
            raise ValueError(f"{name}: expected an int or (h, w), got {len(v)} values")
        return tuple(v)

    if isinstance(offset_scale, bool) or not isinstance(offset_scale, (int, float, np.floating, np.integer)):
        raise TypeError(f"offset_scale: expected a number, got {type(offset_scale).__name__}")
    return (pair("kernel_size", kernel_size), pair("stride", stride), pair("pad", pad), pair("dilation", dilation),
            integer("group", group), integer("group_channels", group_channels), float(offset_scale),
            flag("remove_center", remove_center))


def dcnv3(input, offset, mask, kernel_size=3, stride=1, pad=0, dilation=1, group=1, group_channels=None,
          offset_scale=1.0, remove_center=False, *, backend="engine"):
    """InternImage's DCNv3 core (``DCNv3Function`` / ``dcnv3_core_pytorch``), channels-last.

    input [N, H, W, G*D], offset [N, Ho, Wo, G*P*2] ((x, y) per point), mask [N, Ho, Wo, G*P]
    (already normalised: no softmax inside) -> output [N, Ho, Wo, G*D]; P = kh*kw, less the centre
    when ``remove_center``. ``group_channels`` defaults to C / group. docs/SPEC.md §6.
    """
    input = _array("input", input)
    gc = _group_channels(input, group, group_channels)
    return _core.dcnv3_forward(input, _array("offset", offset), _array("mask", mask) if mask is not None else
                               _missing_mask(), _dcn3_attrs(kernel_size, stride, pad, dilation, group, gc,
                                                            offset_scale, remove_center), backend)


def dcnv3_backward(grad_output, input, offset, mask, kernel_size=3, stride=1, pad=0, dilation=1, group=1,
                   group_channels=None, offset_scale=1.0, remove_center=False, *, backend="engine"):
    """(grad_input, grad_offset, grad_mask) of :func:`dcnv3` for ``grad_output`` [N, Ho, Wo, G*D]."""
    input = _array("input", input)
    gc = _group_channels(input, group, group_channels)
    return _core.dcnv3_backward(_array("grad_output", grad_output), input, _array("offset", offset),
                                _array("mask", mask) if mask is not None else _missing_mask(),
                                _dcn3_attrs(kernel_size, stride, pad, dilation, group, gc, offset_scale,
                                            remove_center), backend)


def _group_channels(input, group, group_channels):
    """``group_channels``, or C / group when None (the core checks that they agree with C)."""
    if group_channels is not None or input.ndim != 4 or isinstance(group, bool) or not isinstance(group, int):
        return group_channels
    return input.shape[-1] // group if group > 0 else 1


def _missing_mask():
    raise TypeError("mask: expected a numpy array [N, Ho, Wo, G*P] (DCNv3 has no default mask), got None")


def dcnv4(input, offset_mask, kernel_size=3, stride=1, pad=0, dilation=1, group=1, group_channels=None,
          offset_scale=1.0, remove_center=False, *, backend="engine"):
    """DCNv4 (``DCNv4Function``): DCNv3 with one packed ``offset_mask`` [N, Ho, Wo, >= G*P*3]: per
    group P (x, y) pairs then P masks; the last dimension may be padded (DCNv4 pads to a multiple
    of 8). No softmax inside. Returns [N, Ho, Wo, G*D]."""
    input = _array("input", input)
    gc = _group_channels(input, group, group_channels)
    return _core.dcnv3_forward(input, _array("offset_mask", offset_mask), None,
                               _dcn3_attrs(kernel_size, stride, pad, dilation, group, gc, offset_scale,
                                           remove_center), backend)


def dcnv4_backward(grad_output, input, offset_mask, kernel_size=3, stride=1, pad=0, dilation=1, group=1,
                   group_channels=None, offset_scale=1.0, remove_center=False, *, backend="engine"):
    """(grad_input, grad_offset_mask) of :func:`dcnv4` (zero on offset_mask's padding)."""
    input = _array("input", input)
    gc = _group_channels(input, group, group_channels)
    return _core.dcnv3_backward(_array("grad_output", grad_output), input, _array("offset_mask", offset_mask),
                                None, _dcn3_attrs(kernel_size, stride, pad, dilation, group, gc, offset_scale,
                                                  remove_center), backend)


def _levels(spatial_shapes, level_start_index):
    """The levels as lists of ints: spatial shapes [(H, W)] and start indices (computed as the
    prefix sums of H*W when None); arrays and tensors of integers are taken."""
    shapes = np.asarray(spatial_shapes)
    if shapes.ndim != 2 or shapes.shape[1] != 2 or not np.issubdtype(shapes.dtype, np.integer):
        raise ValueError(f"spatial_shapes: expected integers of shape [L, 2], got {shapes.dtype} {shapes.shape}")
    shapes = [(int(h), int(w)) for h, w in shapes.tolist()]
    if level_start_index is None:
        starts, at = [], 0
        for h, w in shapes:
            starts.append(at)
            at += h * w
        return shapes, starts
    starts = np.asarray(level_start_index)
    if starts.ndim != 1 or not np.issubdtype(starts.dtype, np.integer):
        raise ValueError(f"level_start_index: expected integers of shape [L], got {starts.dtype} {starts.shape}")
    return shapes, [int(v) for v in starts.tolist()]


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, *,
                   backend="engine"):
    """Multi-scale deformable attention (Deformable DETR's ``ms_deform_attn_core_pytorch``).

    value [N, S, M, D], spatial_shapes [L, 2] (H, W), level_start_index [L] (None: computed),
    sampling_locations [N, Lq, M, L, P, 2] ((x, y) in [0, 1]), attention_weights [N, Lq, M, L, P]
    -> output [N, Lq, M*D]. docs/SPEC.md §7.
    """
    shapes, starts = _levels(spatial_shapes, level_start_index)
    return _core.msda_forward(_array("value", value), shapes, starts, _array("sampling_locations", sampling_locations),
                              _array("attention_weights", attention_weights), backend)


def ms_deform_attn_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                            attention_weights, *, backend="engine"):
    """(grad_value, grad_sampling_locations, grad_attention_weights) of :func:`ms_deform_attn`."""
    shapes, starts = _levels(spatial_shapes, level_start_index)
    return _core.msda_backward(_array("grad_output", grad_output),
                               (_array("value", value), _array("sampling_locations", sampling_locations),
                                _array("attention_weights", attention_weights)), shapes, starts, backend)


def set_num_threads(n):
    """Sets the engine's thread count for the numpy API (0 = one per core). Results do not depend
    on it. Under ``deform_conv.torch`` the engine runs on torch's threads instead (see README)."""
    _core.set_num_threads(_count("set_num_threads: n", n))


def interleaved_to_packed(offset, mask=None):
    """[N, 2GK, Ho, Wo] interleaved offset (+ [N, GK, Ho, Wo] mask, default ones) -> [N, 3GK, Ho, Wo] packed."""
    return _core.interleaved_to_packed(_array("offset", offset), _array("mask", mask))


def packed_to_interleaved(packed):
    """[N, 3GK, Ho, Wo] packed -> (interleaved offset [N, 2GK, Ho, Wo], mask [N, GK, Ho, Wo])."""
    return _core.packed_to_interleaved(_array("offset", packed))


def nchw_to_nhwc(a):
    """[N, C, H, W] -> [N, H, W, C] (a contiguous copy)."""
    return _core.convert_layout(_array("array", a), "nchw_to_nhwc")


def nhwc_to_nchw(a):
    """[N, H, W, C] -> [N, C, H, W] (a contiguous copy)."""
    return _core.convert_layout(_array("array", a), "nhwc_to_nchw")


def oihw_to_hwcn(w):
    """Weight [Cout, C/g, kh, kw] -> [kh, kw, C/g, Cout]."""
    return _core.convert_layout(_array("array", w), "oihw_to_hwcn")


def hwcn_to_oihw(w):
    """Weight [kh, kw, C/g, Cout] -> [Cout, C/g, kh, kw]."""
    return _core.convert_layout(_array("array", w), "hwcn_to_oihw")


from . import mindspore, npu, onnx  # noqa: E402  (submodules use the helpers above)
