"""DCNv3 against the grid_sample fallback that InternImage's users run on CPUs, side by side in
one process, interleaved: an InternImage-T stage-1 layer at detection resolution (1x200x336x64,
4 groups of 16 channels, 3x3, pad 1) and its stage-2 layer (1x100x168x128, 8 groups).

    .venv/bin/python bench/dcnv3.py --repeat 5
"""
import argparse
import pathlib
import sys

import torch

import deform_conv
import deform_conv.torch as dct

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "python"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from side_by_side import compare  # noqa: E402
from grid_sample_dcnv3 import grid_sample_dcnv3  # noqa: E402

SHAPES = {"internimage_t_stage1": (1, 200, 336, 4, 16), "internimage_t_stage2": (1, 100, 168, 8, 16)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    for name, (n, h, w, groups, gc) in SHAPES.items():
        x = torch.randn(n, h, w, groups * gc, generator=g, requires_grad=True)
        off = (2 * torch.randn(n, h, w, groups * 18, generator=g)).requires_grad_()
        m = torch.softmax(torch.randn(n, h, w, groups, 9, generator=g), -1).reshape(n, h, w, -1).requires_grad_()
        impls = {
            "deform_conv": lambda: dct.dcnv3_core_pytorch(x, off, m, 3, 3, 1, 1, 1, 1, 1, 1, groups, gc, 1.0),
            "grid_sample": lambda: grid_sample_dcnv3(x, off, m, 3, 3, 1, 1, 1, 1, 1, groups, gc, 1.0, False),
        }
        compare(name, impls, a.repeat)
    print(f"({a.threads} threads, isa {deform_conv.active_isa()}, median of {a.repeat})")


if __name__ == "__main__":
    main()
