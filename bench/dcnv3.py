"""DCNv3 against the grid_sample fallback that InternImage's users run on CPUs, side by side in
one process, interleaved: an InternImage-T stage-1 layer at detection resolution (1x200x336x64,
4 groups of 16 channels, 3x3, pad 1) and its stage-2 layer (1x100x168x128, 8 groups).

    .venv/bin/python bench/dcnv3.py --repeat 5
"""
import argparse
import pathlib
import sys
import time

import numpy as np
import torch

import deform_conv.torch as dct

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "python"))
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
        with torch.no_grad():
            err = (impls["deform_conv"]() - impls["grid_sample"]()).abs().max().item()
        times = {(k, b): [] for k in impls for b in ("fwd", "fwd+bwd")}
        for _ in range(a.repeat):
            for k, f in impls.items():
                t = time.perf_counter()
                with torch.no_grad():
                    f()
                times[(k, "fwd")].append(time.perf_counter() - t)
                t = time.perf_counter()
                f().sum().backward()
                times[(k, "fwd+bwd")].append(time.perf_counter() - t)
        print(f"{name} (max |ours - grid_sample| = {err:.1e})")
        for b in ("fwd", "fwd+bwd"):
            ours, gs = (np.median(times[(k, b)]) * 1e3 for k in ("deform_conv", "grid_sample"))
            print(f"  {b:<8} deform_conv {ours:8.1f} ms   grid_sample {gs:8.1f} ms   speed-up {gs / ours:5.1f}x")
    print(f"({a.threads} threads, isa {dct._core.active_isa()}, median of {a.repeat})")


if __name__ == "__main__":
    main()
