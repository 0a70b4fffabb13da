"""Does the numpy API lose time to BLAS threads that are still spinning? Times one deform_conv
layer alone, and right after a numpy matmul (OpenBLAS threads busy-wait for a while after a call),
both medians in one process.

    .venv/bin/python bench/numpy_after_blas.py [--repeat 15]
"""
import argparse
import time

import numpy as np

import deform_conv as dc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 256, 64, 64), dtype=np.float32)
    w = (rng.standard_normal((256, 256, 3, 3)) / 48).astype(np.float32)
    off = 2 * rng.standard_normal((1, 18, 64, 64), dtype=np.float32)
    m = rng.random((1, 9, 64, 64), dtype=np.float32)
    big = rng.standard_normal((768, 768), dtype=np.float32)
    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info())
    except ImportError:
        blas = "threadpoolctl not installed"

    def layer():
        dc.deform_conv2d(x, off, w, None, 1, 1, 1, m)

    def timed(before):
        ts = []
        for _ in range(a.repeat):
            before()
            t = time.perf_counter()
            layer()
            ts.append(time.perf_counter() - t)
        ts.sort()
        return ts[len(ts) // 2] * 1e3

    layer()
    alone = timed(lambda: time.sleep(0.05))
    after = timed(lambda: big @ big)
    print(f"numpy {np.__version__} ({blas}); deform_conv {dc.num_threads()} threads")
    print(f"resnet_c4_dcn forward alone (after a 50 ms sleep): {alone:.2f} ms")
    print(f"resnet_c4_dcn forward right after a 768x768 matmul: {after:.2f} ms ({after / alone:.2f}x)")


if __name__ == "__main__":
    main()
