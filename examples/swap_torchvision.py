"""Swap torchvision's deform_conv2d for deform_conv's in a small DCN model; print both times and the largest difference.

    .venv/bin/python examples/swap_torchvision.py
"""
import time

import torch
import torchvision
from torch import nn

import deform_conv.torch as dct


class DCNBlock(nn.Module):
    """An offset-predicting conv followed by a modulated deformable conv (DCNv2), as in detectors and EDVR."""

    def __init__(self, channels, deform_conv_cls):
        super().__init__()
        self.offset = nn.Conv2d(channels, 3 * 9, 3, padding=1)
        self.dcn = deform_conv_cls(channels, channels, 3, padding=1)

    def forward(self, x):
        o = self.offset(x)
        offset, mask = o[:, :18], torch.sigmoid(o[:, 18:])
        return torch.relu(self.dcn(x, offset, mask))


def model(cls):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), DCNBlock(64, cls), DCNBlock(64, cls), nn.Conv2d(64, 3, 1))


def timed(m, x, repeat=5):
    with torch.no_grad():
        m(x)
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            y = m(x)
            ts.append(time.perf_counter() - t)
    return y, sorted(ts)[repeat // 2]


if __name__ == "__main__":
    torch.set_num_threads(2)
    x = torch.randn(2, 3, 96, 96)
    theirs = model(torchvision.ops.DeformConv2d)
    ours = model(dct.DeformConv2d)
    ours.load_state_dict(theirs.state_dict())  # torchvision's weights load unchanged
    y_tv, t_tv = timed(theirs, x)
    y_dc, t_dc = timed(ours, x)
    print(f"torchvision.ops.DeformConv2d : {t_tv * 1e3:8.2f} ms")
    print(f"deform_conv.torch.DeformConv2d: {t_dc * 1e3:8.2f} ms  ({t_tv / t_dc:.1f}x faster)")
    print(f"largest |difference|          : {(y_tv - y_dc).abs().max().item():.3e}")
