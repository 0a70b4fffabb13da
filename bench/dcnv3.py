"""DCNv3 against the grid_sample fallback that InternImage's users run on CPUs, side by side in
one process, interleaved: InternImage-T's four stage layers (channels 64-512, groups 4-32 of 16
channels, 3x3, pad 1) at detection resolution (800x1333: 200x336 down to 25x42) and at 224x224
(56x56 down to 7x7), forward with a memory floor beside it (reading the input, offsets and
masks and writing an output once), and forward+backward. Prints the geomeans.

    .venv/bin/python bench/dcnv3.py --repeat 5
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
from grid_sample_dcnv3 import grid_sample_dcnv3  # noqa: E402

SHAPES = {f"internimage_t_stage{i + 1}_{res}": (1, h >> i, w >> i, 4 << i, 16)
          for res, (h, w) in (("800x1333", (200, 336)), ("224", (56, 56))) for i in range(4)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    ups = {}
    for name, (n, h, w, groups, gc) in SHAPES.items():
        x = torch.randn(n, h, w, groups * gc, generator=g, requires_grad=True)
        off = (2 * torch.randn(n, h, w, groups * 18, generator=g)).requires_grad_()
        m = torch.softmax(torch.randn(n, h, w, groups, 9, generator=g), -1).reshape(n, h, w, -1).requires_grad_()
        impls = {
            "deform_conv": lambda: dct.dcnv3_core_pytorch(x, off, m, 3, 3, 1, 1, 1, 1, 1, 1, groups, gc, 1.0),
            "grid_sample": lambda: grid_sample_dcnv3(x, off, m, 3, 3, 1, 1, 1, 1, 1, groups, gc, 1.0, False),
        }
        def floor():
            with torch.no_grad():
                return x.clone(), off.sum(), m.sum()
        ups[name] = compare(name, impls, a.repeat, floor)
    for res in ("800x1333", "224"):
        v = np.array([u for k, u in ups.items() if k.endswith(res)])
        print(f"geomean speed-up at {res}: forward {np.exp(np.log(v[:, 0]).mean()):.1f}x, "
              f"forward+backward {np.exp(np.log(v[:, 1]).mean()):.1f}x")
    print(f"({a.threads} threads, isa {deform_conv.active_isa()}, median of {a.repeat})")


if __name__ == "__main__":
    main()
