"""Drop-in modules: InternImage's ``DCNv3`` (and ``DCNv3_pytorch``) and DCNv4's ``DCNv4``, with their
constructor arguments, submodule names (so their checkpoints load unchanged), initialisation and
forward, the core op on our kernel."""
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .dcnv3 import dcnv3_function, dcnv4_function

__all__ = ["DCNv3", "DCNv3_pytorch", "DCNv4"]


class _ChannelsLast(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class _ChannelsFirst(nn.Module):
    def forward(self, x):
        return x.permute(0, 3, 1, 2)


def _norm(channels: int, norm_layer: str) -> nn.Sequential:
    """InternImage's norm layer from channels-first to channels-last (its Sequential's indices)."""
    if norm_layer == "LN":
        return nn.Sequential(_ChannelsLast(), nn.LayerNorm(channels, eps=1e-6))
    if norm_layer == "BN":
        return nn.Sequential(nn.BatchNorm2d(channels), _ChannelsLast())
    raise NotImplementedError(f"norm_layer: expected 'LN' or 'BN', got {norm_layer!r}")


def _act(act_layer: str) -> nn.Module:
    acts = {"ReLU": lambda: nn.ReLU(inplace=True), "SiLU": lambda: nn.SiLU(inplace=True), "GELU": nn.GELU}
    if act_layer not in acts:
        raise NotImplementedError(f"act_layer: expected one of {sorted(acts)}, got {act_layer!r}")
    return acts[act_layer]()


def _center_scale(module, group: int, channels: int) -> None:
    module.center_feature_scale_proj_weight = nn.Parameter(torch.zeros((group, channels), dtype=torch.float))
    module.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group, dtype=torch.float))


def _blend(module, x, x_proj, query):
    """``center_feature_scale``: x and its projection mixed per group by a sigmoid gate of `query`."""
    scale = F.linear(query, module.center_feature_scale_proj_weight, module.center_feature_scale_proj_bias).sigmoid()
    scale = scale[..., None].repeat(1, 1, 1, 1, module.channels // module.group).flatten(-2)
    return x * (1 - scale) + x_proj * scale


class DCNv3(nn.Module):
    """InternImage's ``DCNv3`` module: input and output ``[N, H, W, C]``; a depthwise conv, norm and
    activation make the offsets and the per-group softmaxed mask, then DCNv3 samples the projected
    input."""

    def __init__(self, channels=64, kernel_size=3, dw_kernel_size=None, stride=1, pad=1, dilation=1, group=4,
                 offset_scale=1.0, act_layer="GELU", norm_layer="LN", center_feature_scale=False,
                 remove_center=False):
        super().__init__()
        if channels % group != 0:
            raise ValueError(f"channels must be divisible by group, but got {channels} and {group}")
        dw_kernel_size = dw_kernel_size if dw_kernel_size is not None else kernel_size
        gc = channels // group
        if gc & (gc - 1) != 0:
            warnings.warn("DCNv3: channels per group that are not a power of 2 are slower in InternImage's CUDA "
                          "kernel (ours does not mind)")
        self.offset_scale = offset_scale
        self.channels = channels
        self.kernel_size = kernel_size
        self.dw_kernel_size = dw_kernel_size
        self.stride = stride
        self.dilation = dilation
        self.pad = pad
        self.group = group
        self.group_channels = gc
        self.center_feature_scale = center_feature_scale
        self.remove_center = int(remove_center)
        if self.remove_center and kernel_size % 2 == 0:
            raise ValueError("remove_center is only compatible with odd kernel size.")
        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=dw_kernel_size, stride=1, padding=(dw_kernel_size - 1) // 2,
                      groups=channels),
            _norm(channels, norm_layer), _act(act_layer))
        points = group * (kernel_size * kernel_size - self.remove_center)
        self.offset = nn.Linear(channels, points * 2)
        self.mask = nn.Linear(channels, points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        self._reset_parameters()
        if center_feature_scale:
            _center_scale(self, group, channels)

    def _reset_parameters(self):
        for lin in (self.offset, self.mask):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        for lin in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, input):
        n, h, w, _ = input.shape
        x = self.input_proj(input)
        x_proj = x
        x1 = self.dw_conv(input.permute(0, 3, 1, 2))
        offset = self.offset(x1)
        mask = F.softmax(self.mask(x1).reshape(n, h, w, self.group, -1), -1).reshape(n, h, w, -1).type(x.dtype)
        k = self.kernel_size
        x = dcnv3_function(x, offset, mask, k, k, self.stride, self.stride, self.pad, self.pad, self.dilation,
                           self.dilation, self.group, self.group_channels, self.offset_scale, 256, self.remove_center)
        if self.center_feature_scale:
            x = _blend(self, x, x_proj, x1)
        return self.output_proj(x)


#: InternImage's pure-PyTorch module: the same parameters and forward.
DCNv3_pytorch = DCNv3


class DCNv4(nn.Module):
    """DCNv4's ``DCNv4`` module: input ``[N, L, C]`` (``shape=(H, W)``, square when omitted), one
    linear layer makes the packed ``offset_mask`` (no softmax), output ``[N, L, C]``."""

    def __init__(self, channels=64, kernel_size=3, stride=1, pad=1, dilation=1, group=4, offset_scale=1.0,
                 dw_kernel_size=None, center_feature_scale=False, remove_center=False, output_bias=True,
                 without_pointwise=False, **kwargs):
        super().__init__()
        if channels % group != 0:
            raise ValueError(f"channels must be divisible by group, but got {channels} and {group}")
        self.offset_scale = offset_scale
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.pad = pad
        self.group = group
        self.group_channels = channels // group
        self.dw_kernel_size = dw_kernel_size
        self.center_feature_scale = center_feature_scale
        self.remove_center = int(remove_center)
        self.without_pointwise = without_pointwise
        self.K = group * (kernel_size * kernel_size - self.remove_center)
        if dw_kernel_size is not None:
            self.offset_mask_dw = nn.Conv2d(channels, channels, dw_kernel_size, stride=1,
                                            padding=(dw_kernel_size - 1) // 2, groups=channels)
        self.offset_mask = nn.Linear(channels, int(math.ceil((self.K * 3) / 8) * 8))
        if not without_pointwise:
            self.value_proj = nn.Linear(channels, channels)
            self.output_proj = nn.Linear(channels, channels, bias=output_bias)
        self._reset_parameters()
        if center_feature_scale:
            _center_scale(self, group, channels)

    def _reset_parameters(self):
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        if not self.without_pointwise:
            nn.init.xavier_uniform_(self.value_proj.weight)
            nn.init.zeros_(self.value_proj.bias)
            nn.init.xavier_uniform_(self.output_proj.weight)
            if self.output_proj.bias is not None:
                nn.init.zeros_(self.output_proj.bias)

    def forward(self, input, shape=None):
        n, length, c = input.shape
        h, w = shape if shape is not None else (int(length ** 0.5), int(length ** 0.5))
        x = self.value_proj(input) if not self.without_pointwise else input
        x = x.reshape(n, h, w, -1)
        if self.dw_kernel_size is not None:
            om_in = self.offset_mask_dw(input.view(n, h, w, c).permute(0, 3, 1, 2))
            om_in = om_in.permute(0, 2, 3, 1).reshape(n, length, c)
        else:
            om_in = input
        offset_mask = self.offset_mask(om_in).reshape(n, h, w, -1)
        x_proj = x
        k = self.kernel_size
        x = dcnv4_function(x, offset_mask, k, k, self.stride, self.stride, self.pad, self.pad, self.dilation,
                           self.dilation, self.group, self.group_channels, self.offset_scale, 256, self.remove_center)
        if self.center_feature_scale:
            x = _blend(self, x, x_proj, x)
        x = x.reshape(n, length, -1)
        return self.output_proj(x) if not self.without_pointwise else x
