"""Multi-scale deformable attention on torch tensors: a custom op with autograd, a fake kernel
(torch.compile) and the peers' signatures. Imported by ``deform_conv.torch``.

* ``ms_deform_attn(value, value_spatial_shapes, value_level_start_index, sampling_locations,
  attention_weights, im2col_step=64)``: Deformable-DETR's ``MSDeformAttnFunction.apply`` order;
* ``multi_scale_deformable_attn_pytorch(value, value_spatial_shapes, sampling_locations,
  attention_weights)``: mmcv's (and Deformable-DETR's ``ms_deform_attn_core_pytorch``) CPU path.
"""
from typing import List

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import _core
from ._checks import _check_like, _check_rank, _is_supported
from ._runtime import _back, _core_call, _fail, _np, _plain, _wants_grad

__all__ = ["ms_deform_attn", "multi_scale_deformable_attn_pytorch"]


def _forward(value: Tensor, shapes: List[int], starts: List[int], loc: Tensor, attn: Tensor) -> Tensor:
    pairs = [(shapes[2 * i], shapes[2 * i + 1]) for i in range(len(shapes) // 2)]
    y = _core_call(_core.msda_forward, _np("value", value), pairs, starts, _np("sampling_locations", loc),
                   _np("attention_weights", attn))
    return _back(y, value.dtype)


def _backward(grad: Tensor, value: Tensor, shapes: List[int], starts: List[int], loc: Tensor,
              attn: Tensor) -> List[Tensor]:
    pairs = [(shapes[2 * i], shapes[2 * i + 1]) for i in range(len(shapes) // 2)]
    gv, gl, ga = _core_call(_core.msda_backward, _np("grad_output", grad),
                            (_np("value", value), _np("sampling_locations", loc), _np("attention_weights", attn)),
                            pairs, starts)
    dt = value.dtype
    return [_back(gv, dt), _back(gl, dt), _back(ga, dt)]


@torch.library.custom_op("deform_conv::ms_deform_attn", mutates_args=())
def _msda(value: Tensor, shapes: List[int], starts: List[int], loc: Tensor, attn: Tensor) -> Tensor:
    return _forward(value, shapes, starts, loc, attn)


@_msda.register_fake
def _(value, shapes, starts, loc, attn):
    return value.new_empty((value.shape[0], loc.shape[1], value.shape[2] * value.shape[3]))


@torch.library.custom_op("deform_conv::ms_deform_attn_backward", mutates_args=())
def _msda_backward(grad: Tensor, value: Tensor, shapes: List[int], starts: List[int], loc: Tensor,
                   attn: Tensor) -> List[Tensor]:
    return _backward(grad, value, shapes, starts, loc, attn)


@_msda_backward.register_fake
def _(grad, value, shapes, starts, loc, attn):
    return [torch.empty_like(value), torch.empty_like(loc), torch.empty_like(attn)]


def _setup(ctx, inputs, output):
    value, shapes, starts, loc, attn = inputs
    ctx.save_for_backward(value, loc, attn)
    ctx.levels = (shapes, starts)


def _grads(ctx, grad, backward):
    """The gradients from `_setup`'s context, through `backward` (the custom backward op, or
    `_backward` itself on the eager path)."""
    value, loc, attn = ctx.saved_tensors
    gv, gl, ga = backward(grad.contiguous(), value, *ctx.levels, loc, attn)
    return gv, None, None, gl, ga


def _grad(ctx, grad):
    return _grads(ctx, grad, _msda_backward)


_msda.register_autograd(_grad, setup_context=_setup)


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


def _run(value: Tensor, shapes: List[int], starts: List[int], loc: Tensor, attn: Tensor) -> Tensor:
    """The op: straight to the engine in plain eager mode (`_plain`), else the custom op."""
    if _plain(value, loc, attn):
        if _wants_grad(value, loc, attn):
            return _Eager.apply(value, shapes, starts, loc, attn)
        return _forward(value, shapes, starts, loc, attn)
    return _msda(value, shapes, starts, loc, attn)


def _levels(spatial_shapes, level_start_index):
    """Flat [H0, W0, H1, W1, ...] and the start indices as lists of ints (tensors, arrays or lists)."""
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes.tolist()
    shapes = [int(v) for hw in spatial_shapes for v in hw]
    if level_start_index is None:
        starts, at = [], 0
        for i in range(0, len(shapes), 2):
            starts.append(at)
            at += shapes[i] * shapes[i + 1]
    else:
        if isinstance(level_start_index, Tensor):
            level_start_index = level_start_index.tolist()
        starts = [int(v) for v in level_start_index]
    return shapes, starts


def _check(value, loc, attn) -> None:
    for name, t, rank in (("value", value, 4), ("sampling_locations", loc, 6), ("attention_weights", attn, 5)):
        if not isinstance(t, Tensor):
            _fail(f"{name}: expected a torch.Tensor, got {type(t).__name__}", True)
        _check_rank(name, t, rank)
    if not _is_supported(value.dtype):
        _fail(f"value: expected dtype float16, bfloat16, float32 or float64, got {value.dtype}", True)
    if value.device.type != "cpu":
        _fail("value: expected a CPU tensor, got a tensor on " + str(value.device))
    _check_like("sampling_locations", loc, value)
    _check_like("attention_weights", attn, value)


def ms_deform_attn(value: Tensor, value_spatial_shapes, value_level_start_index, sampling_locations: Tensor,
                   attention_weights: Tensor, im2col_step: int = 64) -> Tensor:
    """``MSDeformAttnFunction.apply``'s order: value [N, S, M, D], spatial shapes [L, 2], start index
    [L], sampling_locations [N, Lq, M, L, P, 2], attention_weights [N, Lq, M, L, P] -> [N, Lq, M*D];
    differentiable in value, sampling_locations and attention_weights (``im2col_step`` not used)."""
    _check(value, sampling_locations, attention_weights)
    shapes, starts = _levels(value_spatial_shapes, value_level_start_index)
    return _run(value, shapes, starts, sampling_locations, attention_weights)


def multi_scale_deformable_attn_pytorch(value: Tensor, value_spatial_shapes, sampling_locations: Tensor,
                                        attention_weights: Tensor) -> Tensor:
    """mmcv's ``multi_scale_deformable_attn_pytorch`` signature (level starts from the shapes)."""
    _check(value, sampling_locations, attention_weights)
    shapes, starts = _levels(value_spatial_shapes, None)
    return _run(value, shapes, starts, sampling_locations, attention_weights)
