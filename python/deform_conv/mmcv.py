"""``mmcv.ops``-compatible deformable convolution on this package's CPU kernel.

Same names, constructor arguments (``deform_groups``, ``im2col_step``; the deprecated
``deformable_groups`` too), parameter names and state_dict keys (``weight``, ``bias``,
``conv_offset.*``), initialisation and offset layout (interleaved ``(dy, dx)`` per tap, as
torchvision) as mmcv, and **mmcv's gradient rule**: the offset and mask gradients of a sample are
zero unless it lies strictly inside ``(-1, H) x (-1, W)`` (docs/SPEC.md §2). So mmdet and mmagic
models (DCN ResNets, EDVR, BasicVSR++) run on a CPU without building mmcv's extension::

    from deform_conv.mmcv import ModulatedDeformConv2dPack   # instead of mmcv.ops

Functions: :func:`deform_conv2d` (v1) and :func:`modulated_deform_conv2d` (v2), with mmcv's
positional signatures. Modules: :class:`DeformConv2d`, :class:`DeformConv2dPack`,
:class:`ModulatedDeformConv2d`, :class:`ModulatedDeformConv2dPack`. float16, float32, float64
and bfloat16 on CPU (half types computed in float32).
"""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair, _single

from .torch import DeformConvError
from .torch._checks import _check_conv, _check_tensors, _eager_pair

__all__ = ["MultiScaleDeformableAttention", "MultiScaleDeformableAttnFunction", "multi_scale_deformable_attn_pytorch",
           "deform_conv2d", "modulated_deform_conv2d", "DeformConv2d", "DeformConv2dPack",
           "ModulatedDeformConv2d", "ModulatedDeformConv2dPack"]


def _output_size(input: Tensor, weight: Tensor, stride, padding, dilation) -> None:
    """mmcv's check: the output must not be empty (floor rounding)."""
    sizes = [input.shape[0], weight.shape[0]]
    for d in range(2):
        k = dilation[d] * (weight.shape[d + 2] - 1) + 1
        sizes.append((input.shape[d + 2] + 2 * padding[d] - k) // stride[d] + 1)
    if not all(s > 0 for s in sizes[2:]):
        raise DeformConvError("convolution input is too small (output would be " + "x".join(map(str, sizes)) + ")")


def _positive(name: str, v) -> int:
    """A positive int, or a DeformConvError naming it (mmcv itself divides by it first)."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise DeformConvError(f"{name}: expected a positive integer, got {v!r}")
    return v


def _run(input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups):
    if input.dim() != 4:
        raise DeformConvError(f"input: expected a 4-D tensor, got {input.dim()}-D")
    stride, padding, dilation = (_eager_pair(n, v) for n, v in
                                 (("stride", stride), ("padding", padding), ("dilation", dilation)))
    _check_conv(stride, padding, dilation)
    groups, deform_groups = _positive("groups", groups), _positive("deform_groups", deform_groups)
    # mmcv's amp rule: the offset's dtype decides (nn.Conv2d under autocast returns half offsets).
    input = input.type_as(offset)
    weight = weight.type_as(input)
    bias = bias.type_as(input) if bias is not None else None
    mask = mask.type_as(input) if mask is not None else None
    _check_tensors(input, offset, weight, bias, mask)
    if weight.shape[0] % groups or input.shape[1] != weight.shape[1] * groups:
        raise DeformConvError(f"groups: expected {input.shape[1]} / groups = weight.shape[1] = {weight.shape[1]}, "
                              f"got groups = {groups}")
    taps = weight.shape[2] * weight.shape[3]
    if offset.shape[1] != 2 * deform_groups * taps:
        raise DeformConvError(f"offset: expected 2 * deform_groups * kh * kw = {2 * deform_groups * taps} channels, "
                              f"got {offset.shape[1]}")
    _output_size(input, weight, stride, padding, dilation)
    return torch.ops.deform_conv.deform_conv2d(input, offset, weight, bias, mask, list(stride), list(padding),
                                               list(dilation), True)


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, stride=1, padding=0, dilation=1, groups: int = 1,
                  deform_groups: int = 1, bias: bool = False, im2col_step: int = 32) -> Tensor:
    """``mmcv.ops.deform_conv2d`` (DCN v1): no bias (mmcv asserts ``bias is False``); ``im2col_step``
    is accepted and checked as mmcv does (the batch must be divisible by it), not otherwise used."""
    assert bias is False, "Only support bias is False."
    step = min(_positive("im2col_step", im2col_step), input.shape[0]) if input.shape[0] else 1
    assert input.shape[0] % step == 0, "batch size must be divisible by im2col_step"
    return _run(input, offset, None, weight, None, stride, padding, dilation, groups, deform_groups)


def modulated_deform_conv2d(input: Tensor, offset: Tensor, mask: Tensor, weight: Tensor,
                            bias: Optional[Tensor] = None, stride=1, padding=0, dilation=1, groups: int = 1,
                            deform_groups: int = 1) -> Tensor:
    """``mmcv.ops.modulated_deform_conv2d`` (DCN v2)."""
    return _run(input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups)


def _deform_groups(deform_groups, kwargs):
    """mmcv's deprecated alias ``deformable_groups``."""
    if "deformable_groups" in kwargs:
        deform_groups = kwargs.pop("deformable_groups")
    if kwargs:
        raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
    return deform_groups


class DeformConv2d(nn.Module):
    """``mmcv.ops.DeformConv2d``: DCN v1, no bias, kaiming-uniform weight."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Union[int, Tuple[int, ...]],
                 stride: Union[int, Tuple[int, ...]] = 1, padding: Union[int, Tuple[int, ...]] = 0,
                 dilation: Union[int, Tuple[int, ...]] = 1, groups: int = 1, deform_groups: int = 1,
                 bias: bool = False, im2col_step: int = 32, **kwargs) -> None:
        super().__init__()
        deform_groups = _positive("deform_groups", _deform_groups(deform_groups, kwargs))
        groups, im2col_step = _positive("groups", groups), _positive("im2col_step", im2col_step)
        assert not bias, f"bias={bias} is not supported in DeformConv2d."
        assert in_channels % groups == 0, f"in_channels {in_channels} cannot be divisible by groups {groups}"
        assert out_channels % groups == 0, f"out_channels {out_channels} cannot be divisible by groups {groups}"
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deform_groups = deform_groups
        self.im2col_step = im2col_step
        self.transposed = False  # nn.Conv2d compatibility, as mmcv
        self.output_padding = _single(0)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        # As mmcv: an input smaller than the kernel is padded at the bottom/right, the output cut back.
        pad_h = max(self.kernel_size[0] - x.size(2), 0)
        pad_w = max(self.kernel_size[1] - x.size(3), 0)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), "constant", 0)
            offset = F.pad(offset, (0, pad_w, 0, pad_h), "constant", 0)
        out = deform_conv2d(x, offset, self.weight, self.stride, self.padding, self.dilation, self.groups,
                            self.deform_groups, False, self.im2col_step)
        if pad_h or pad_w:
            out = out[:, :, :out.size(2) - pad_h, :out.size(3) - pad_w].contiguous()
        return out

    def __repr__(self):
        return (f"{self.__class__.__name__}(in_channels={self.in_channels},\nout_channels={self.out_channels},\n"
                f"kernel_size={self.kernel_size},\nstride={self.stride},\npadding={self.padding},\n"
                f"dilation={self.dilation},\ngroups={self.groups},\ndeform_groups={self.deform_groups},\n"
                "bias=False)")


class _OffsetKeysV1:
    """Loads mmcv's version-1 checkpoints, whose offset conv is named ``<layer>_offset``."""

    _version = 2

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        _upgrade_offset_keys(state_dict, prefix, local_metadata)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _upgrade_offset_keys(state_dict, prefix, local_metadata):
    """mmcv's version-1 checkpoints name the offset conv ``<layer>_offset``; version 2 ``conv_offset``."""
    version = local_metadata.get("version", None)
    if version is None or version < 2:
        for suffix in ("weight", "bias"):
            new, old = prefix + "conv_offset." + suffix, prefix[:-1] + "_offset." + suffix
            if new not in state_dict and old in state_dict:
                state_dict[new] = state_dict.pop(old)


class DeformConv2dPack(_OffsetKeysV1, DeformConv2d):
    """``mmcv.ops.DeformConv2dPack``: DCN v1 with its offset conv ``conv_offset`` (zero-initialised)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conv_offset = nn.Conv2d(self.in_channels, self.deform_groups * 2 * self.kernel_size[0]
                                     * self.kernel_size[1], kernel_size=self.kernel_size, stride=self.stride,
                                     padding=self.padding, dilation=self.dilation, bias=True)
        self.init_offset()

    def init_offset(self):
        self.conv_offset.weight.data.zero_()
        self.conv_offset.bias.data.zero_()

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        offset = self.conv_offset(x)
        return deform_conv2d(x, offset, self.weight, self.stride, self.padding, self.dilation, self.groups,
                             self.deform_groups, False, self.im2col_step)


class ModulatedDeformConv2d(nn.Module):
    """``mmcv.ops.ModulatedDeformConv2d``: DCN v2; weight ~ U(-1/sqrt(n), 1/sqrt(n)), bias zero."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Union[int, Tuple[int]], stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, deform_groups: int = 1,
                 bias: Union[bool, str] = True, **kwargs):
        super().__init__()
        deform_groups = _positive("deform_groups", _deform_groups(deform_groups, kwargs))
        groups = _positive("groups", groups)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deform_groups = deform_groups
        self.transposed = False
        self.output_padding = _single(0)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.init_weights()

    def init_weights(self):
        n = self.in_channels
        for k in self.kernel_size:
            n *= k
        stdv = 1.0 / math.sqrt(n)
        self.weight.data.uniform_(-stdv, stdv)
        if self.bias is not None:
            self.bias.data.zero_()

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride, self.padding,
                                       self.dilation, self.groups, self.deform_groups)


class ModulatedDeformConv2dPack(_OffsetKeysV1, ModulatedDeformConv2d):
    """``mmcv.ops.ModulatedDeformConv2dPack`` (mmdet's ``DCNv2``): its ``conv_offset`` gives
    ``[o1 | o2 | mask]`` chunks; the offset is ``cat(o1, o2)`` read interleaved, the mask
    ``sigmoid(mask)``; ``conv_offset`` starts at zero."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conv_offset = nn.Conv2d(self.in_channels, self.deform_groups * 3 * self.kernel_size[0]
                                     * self.kernel_size[1], kernel_size=self.kernel_size, stride=self.stride,
                                     padding=self.padding, dilation=self.dilation, bias=True)
        self.init_weights()

    def init_weights(self) -> None:
        super().init_weights()
        if hasattr(self, "conv_offset"):
            self.conv_offset.weight.data.zero_()
            self.conv_offset.bias.data.zero_()

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        out = self.conv_offset(x)
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        mask = torch.sigmoid(mask)
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride, self.padding,
                                       self.dilation, self.groups, self.deform_groups)


# ------------------------------------------------------------------ multi-scale deformable attention

from .torch.msda import ms_deform_attn, multi_scale_deformable_attn_pytorch  # noqa: E402


class MultiScaleDeformableAttnFunction:
    """mmcv's autograd function: ``apply(value, spatial_shapes, level_start_index, sampling_locations,
    attention_weights, im2col_step)``, on our kernel (``im2col_step`` is accepted and not needed)."""

    @staticmethod
    def apply(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
              im2col_step=64):
        return ms_deform_attn(value, value_spatial_shapes, value_level_start_index, sampling_locations,
                              attention_weights, im2col_step)


class MultiScaleDeformableAttention(nn.Module):
    """mmcv's ``MultiScaleDeformableAttention`` (Deformable DETR's attention block): the same
    constructor arguments, submodules and state_dict keys (``sampling_offsets``,
    ``attention_weights``, ``value_proj``, ``output_proj``), initialisation, ``batch_first``
    convention and forward arguments, with the sampling on our CPU kernel (any device mmcv's
    extension would serve falls back to the pure-PyTorch path, as mmcv does on a CPU)."""

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4,
                 im2col_step: int = 64, dropout: float = 0.1, batch_first: bool = False, norm_cfg=None,
                 init_cfg=None, value_proj_ratio: float = 1.0):
        super().__init__()
        for name, v in (("embed_dims", embed_dims), ("num_heads", num_heads), ("num_levels", num_levels),
                        ("num_points", num_points)):
            _positive(name, v)
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims must be divisible by num_heads, but got {embed_dims} and {num_heads}")
        self.norm_cfg = norm_cfg
        self.init_cfg = init_cfg
        self.dropout = nn.Dropout(dropout)
        self.batch_first = batch_first
        self.im2col_step = im2col_step
        self.embed_dims = embed_dims
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        points = num_heads * num_levels * num_points
        self.sampling_offsets = nn.Linear(embed_dims, points * 2)
        self.attention_weights = nn.Linear(embed_dims, points)
        value_proj_size = int(embed_dims * value_proj_ratio)
        self.value_proj = nn.Linear(embed_dims, value_proj_size)
        self.output_proj = nn.Linear(value_proj_size, embed_dims)
        self.init_weights()

    def init_weights(self) -> None:
        """mmcv's initialisation: offsets zero with a bias fanning the heads' points out around the
        reference point (point i at i+1 steps along the head's direction), attention weights zero,
        the projections Xavier-uniform with zero bias."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: Tensor, key: Optional[Tensor] = None, value: Optional[Tensor] = None,
                identity: Optional[Tensor] = None, query_pos: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None, reference_points: Optional[Tensor] = None,
                spatial_shapes: Optional[Tensor] = None, level_start_index: Optional[Tensor] = None,
                **kwargs) -> Tensor:
        if "residual" in kwargs and identity is None:  # mmcv's deprecated name
            identity = kwargs.pop("residual")
        if reference_points is None or spatial_shapes is None:
            raise DeformConvError("reference_points and spatial_shapes: expected tensors, got None")
        value = query if value is None else value
        identity = query if identity is None else identity
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query, value = query.permute(1, 0, 2), value.permute(1, 0, 2)
        bs, num_query, _ = query.shape
        _, num_value, _ = value.shape
        shapes = spatial_shapes if isinstance(spatial_shapes, Tensor) else torch.as_tensor(spatial_shapes)
        if int((shapes[:, 0] * shapes[:, 1]).sum()) != num_value:
            raise DeformConvError(f"spatial_shapes: expected levels that hold the value's {num_value} positions, "
                                  f"got {shapes.tolist()}")
        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(bs, num_value, self.num_heads, -1)
        h, lv, pt = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(bs, num_query, h, lv, pt, 2)
        weights = self.attention_weights(query).view(bs, num_query, h, lv * pt).softmax(-1)
        weights = weights.view(bs, num_query, h, lv, pt)
        if reference_points.shape[-1] == 2:
            normalizer = torch.stack([shapes[..., 1], shapes[..., 0]], -1).to(offsets.dtype)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / pt * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"Last dim of reference_points must be 2 or 4, but get {reference_points.shape[-1]} "
                             "instead.")
        if value.device.type == "cpu":
            output = ms_deform_attn(value, shapes, level_start_index, locations, weights, self.im2col_step)
        else:
            output = _grid_sample_msda(value, shapes, locations, weights)
        output = self.output_proj(output)
        if not self.batch_first:
            output = output.permute(1, 0, 2)
        return self.dropout(output) + identity


def _grid_sample_msda(value, shapes, locations, weights):
    """The pure-PyTorch formulation (other devices)."""
    bs, _, heads, dims = value.shape
    _, nq, _, levels, points, _ = locations.shape
    sizes = [(int(h), int(w)) for h, w in shapes.tolist()]
    parts = value.split([h * w for h, w in sizes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(sizes):
        v = parts[lvl].flatten(2).transpose(1, 2).reshape(bs * heads, dims, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    w = weights.transpose(1, 2).reshape(bs * heads, 1, nq, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * w).sum(-1).view(bs, heads * dims, nq)
    return out.transpose(1, 2).contiguous()
