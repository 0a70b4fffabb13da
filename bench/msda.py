"""Multi-scale deformable attention against the grid_sample path DETR-family models run on CPUs,
side by side in one process: Deformable DETR's encoder on an 800x1333 image (4 levels at strides
8-64, 8 heads of 32 channels, 4 points; every value pixel a query) and its decoder (300 queries).
Locations two ways: uniform over each level (no locality: the worst case for both), and as a
trained encoder places them (each query's reference point, its own pixel centre, plus offsets of
about 2 pixels of each level).

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
    # Each encoder query's reference point: its pixel's centre, normalised (the same point in
    # every level), as Deformable DETR's encoder computes it.
    ref = torch.cat([torch.stack(torch.meshgrid((torch.arange(w) + 0.5) / w, (torch.arange(h) + 0.5) / h,
                                                indexing="xy"), -1).reshape(-1, 2) for h, w in LEVELS])
    size = torch.tensor([[w, h] for h, w in LEVELS], dtype=torch.float32)  # [L, 2] as (x, y)
    cases = (("detr_encoder, uniform locations", s, None), ("detr_encoder, reference points + ~2 px", s, ref),
             ("detr_decoder, uniform locations", 300, None))
    for name, q, refs in cases:
        value = torch.randn(1, s, 8, 32, generator=g, requires_grad=True)
        if refs is None:
            loc = torch.rand(1, q, 8, 4, 4, 2, generator=g, requires_grad=True)
        else:
            off = 2 * torch.randn(1, q, 8, 4, 4, 2, generator=g) / size[None, None, None, :, None, :]
            loc = (refs[None, :, None, None, None, :] + off).requires_grad_()
        attn = torch.softmax(torch.randn(1, q, 8, 16, generator=g), -1).view(1, q, 8, 4, 4).requires_grad_()
        impls = {"deform_conv": lambda: dct.ms_deform_attn(value, LEVELS, starts, loc, attn),
                 "grid_sample": lambda: grid_sample_msda(value, LEVELS, loc, attn)}
        compare(f"{name} (Lq = {q})", impls, a.repeat)
    print(f"({a.threads} threads, isa {deform_conv.active_isa()}, median of {a.repeat})")


if __name__ == "__main__":
    main()
