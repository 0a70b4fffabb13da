"""The side-by-side loop of bench/dcnv3.py and bench/msda.py: two implementations of one op,
interleaved in one process, forward and forward+backward medians and the speed-up."""
import time

import numpy as np
import torch


def compare(title, impls, repeat):
    """`impls`: {"deform_conv": f, "grid_sample": f}, each returning the output tensor."""
    with torch.no_grad():
        err = (impls["deform_conv"]() - impls["grid_sample"]()).abs().max().item()
    times = {(k, b): [] for k in impls for b in ("fwd", "fwd+bwd")}
    for _ in range(repeat):
        for k, f in impls.items():
            t = time.perf_counter()
            with torch.no_grad():
                f()
            times[(k, "fwd")].append(time.perf_counter() - t)
            t = time.perf_counter()
            f().sum().backward()
            times[(k, "fwd+bwd")].append(time.perf_counter() - t)
    print(f"{title} (max |ours - grid_sample| = {err:.1e})")
    for b in ("fwd", "fwd+bwd"):
        ours, gs = (np.median(times[(k, b)]) * 1e3 for k in ("deform_conv", "grid_sample"))
        print(f"  {b:<8} deform_conv {ours:8.1f} ms   grid_sample {gs:8.1f} ms   speed-up {gs / ours:5.1f}x")
