"""The side-by-side loop of bench/dcnv3.py and bench/msda.py: two implementations of one op,
interleaved in one process, forward and forward+backward medians and the speed-up."""
import time

import numpy as np
import torch


def compare(title, impls, repeat, floor=None):
    """`impls`: {"deform_conv": f, "grid_sample": f}, each returning the output tensor; `floor`:
    a function that reads the op's inputs and writes an output of its size once (timed
    interleaved with the others, forward only). Returns the forward and forward+backward
    speed-ups."""
    with torch.no_grad():
        err = (impls["deform_conv"]() - impls["grid_sample"]()).abs().max().item()
    times = {(k, b): [] for k in impls for b in ("fwd", "fwd+bwd")}
    floor_times = []
    for _ in range(repeat):
        if floor is not None:
            t = time.perf_counter()
            floor()
            floor_times.append(time.perf_counter() - t)
        for k, f in impls.items():
            t = time.perf_counter()
            with torch.no_grad():
                f()
            times[(k, "fwd")].append(time.perf_counter() - t)
            t = time.perf_counter()
            f().sum().backward()
            times[(k, "fwd+bwd")].append(time.perf_counter() - t)
    print(f"{title} (max |ours - grid_sample| = {err:.1e})")
    ups = []
    for b in ("fwd", "fwd+bwd"):
        ours, gs = (np.median(times[(k, b)]) * 1e3 for k in ("deform_conv", "grid_sample"))
        extra = ""
        if b == "fwd" and floor_times:
            fl = np.median(floor_times) * 1e3
            extra = f"   memory floor {fl:6.2f} ms (ours {ours / fl:4.1f}x)"
        print(f"  {b:<8} deform_conv {ours:8.2f} ms   grid_sample {gs:8.2f} ms   speed-up {gs / ours:5.1f}x{extra}")
        ups.append(gs / ours)
    return ups
