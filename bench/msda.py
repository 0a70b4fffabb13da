"""Multi-scale deformable attention against the grid_sample path DETR-family models run on CPUs,
side by side in one process: Deformable DETR's encoder on an 800x1333 image (4 levels at strides
8-64, 8 heads of 32 channels, 4 points; every value pixel a query) and its decoder (300 queries).

    .venv/bin/python bench/msda.py --repeat 3
"""
import argparse
import pathlib
import sys

import numpy as np
import torch

import deform_conv
import deform_conv.torch as dct

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "python"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from side_by_side import compare  # noqa: E402
from test_msda import grid_sample_msda  # noqa: E402

LEVELS = ((100, 167), (50, 84), (25, 42), (13, 21))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    s = sum(h * w for h, w in LEVELS)
    starts = np.cumsum([0] + [h * w for h, w in LEVELS])[:-1].tolist()
    for name, q in (("detr_encoder", s), ("detr_decoder", 300)):
        value = torch.randn(1, s, 8, 32, generator=g, requires_grad=True)
        loc = torch.rand(1, q, 8, 4, 4, 2, generator=g, requires_grad=True)
        attn = torch.softmax(torch.randn(1, q, 8, 16, generator=g), -1).view(1, q, 8, 4, 4).requires_grad_()
        impls = {"deform_conv": lambda: dct.ms_deform_attn(value, LEVELS, starts, loc, attn),
                 "grid_sample": lambda: grid_sample_msda(value, LEVELS, loc, attn)}
        compare(f"{name} (Lq = {q})", impls, a.repeat)
    print(f"({a.threads} threads, isa {deform_conv.active_isa()}, median of {a.repeat})")


if __name__ == "__main__":
    main()
