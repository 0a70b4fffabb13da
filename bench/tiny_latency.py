"""Latency of a tiny layer (1x8x8x8, 3x3, padding 1) through deform_conv.torch and torchvision,
idle and with busy processes sharing the cores: median and p99, forward and forward+backward,
calls of the two implementations interleaved in blocks.

    .venv/bin/python bench/tiny_latency.py --busy 2 --calls 3000
"""
import argparse
import multiprocessing as mp
import time

import numpy as np
import torch
import torchvision

import deform_conv
import deform_conv.torch as dct


def spin(stop):
    x = 0
    while not stop.is_set():
        x += 1


def case(fn, x, off, w, m, backward):
    if backward:
        x.grad = off.grad = w.grad = m.grad = None
        fn(x, off, w, mask=m, padding=(1, 1)).sum().backward()
    else:
        with torch.no_grad():
            fn(x, off, w, mask=m, padding=(1, 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--busy", type=int, default=2, help="busy processes sharing the cores")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 8, 8, generator=g, requires_grad=True)
    off = (2 * torch.randn(1, 18, 8, 8, generator=g)).requires_grad_()
    w = torch.randn(8, 8, 3, 3, generator=g, requires_grad=True)
    m = torch.rand(1, 9, 8, 8, generator=g, requires_grad=True)
    impls = {"deform_conv": dct.deform_conv2d, "torchvision": torchvision.ops.deform_conv2d}
    stop = mp.Event()
    procs = [mp.Process(target=spin, args=(stop,), daemon=True) for _ in range(a.busy)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    try:
        for backward in (False, True):
            times = {k: [] for k in impls}
            for k, f in impls.items():
                for _ in range(20):
                    case(f, x, off, w, m, backward)
            block = 50
            for _ in range(a.calls // block):
                for k, f in impls.items():
                    for _ in range(block):
                        t = time.perf_counter()
                        case(f, x, off, w, m, backward)
                        times[k].append(time.perf_counter() - t)
            what = "forward+backward" if backward else "forward"
            for k, v in times.items():
                v = np.array(v) * 1e6
                print(f"{what:<17} {k:<12} median {np.median(v):8.1f} us   p99 {np.percentile(v, 99):9.1f} us")
    finally:
        stop.set()
        for p in procs:
            p.join()
    print(f"({a.busy} busy processes, {a.threads} threads, {a.calls} calls each, isa {deform_conv.active_isa()})")


if __name__ == "__main__":
    main()
