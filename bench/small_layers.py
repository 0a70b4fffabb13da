"""The small layers where whole models lose time: ResNet's c3-c5 3x3 layers at batch 1 (inference,
512x512 input) and batch 2 (training, 256x256), our op against torch's plain conv2d, forward and
forward+backward, side by side in one process (float32, offsets ~ N(0, 0.5^2), mask ~ U(0, 1)).

    .venv/bin/python bench/small_layers.py [--threads 2] [--repeat 15]
"""
import argparse
import math

import numpy as np
import torch

import deform_conv as dc
from compare import median_ms  # bench/ is on sys.path when this script runs

# (N, C = Cout, H = W, stride)
LAYERS = [(1, 512, 16, 1), (1, 512, 32, 2), (1, 256, 32, 1), (1, 128, 64, 1),
          (2, 512, 8, 1), (2, 512, 16, 2), (2, 256, 16, 1), (2, 128, 32, 1)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dc.set_num_threads(a.threads)
    print(f"threads {a.threads}, median of {a.repeat}; deform_conv kernels: {dc.active_isa()}")
    print("| N, C, HxW, stride | ours fwd ms | conv2d fwd ms | ours/conv | ours fwd+bwd ms | conv2d fwd+bwd ms | ours/conv |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n, c, h, s in LAYERS:
        rng = np.random.default_rng(0)
        ho = (h + 2 - 3) // s + 1
        x = rng.standard_normal((n, c, h, h), dtype=np.float32)
        w = (rng.standard_normal((c, c, 3, 3)) / math.sqrt(9 * c)).astype(np.float32)
        off = (0.5 * rng.standard_normal((n, 18, ho, ho))).astype(np.float32)
        m = rng.uniform(0, 1, (n, 9, ho, ho)).astype(np.float32)
        gy = rng.standard_normal((n, c, ho, ho), dtype=np.float32)
        tx, tw, tgy = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_(), torch.from_numpy(gy)
        ours_f = median_ms(lambda: dc.deform_conv2d(x, off, w, None, s, 1, 1, m), a.repeat)
        ours_b = median_ms(lambda: dc.deform_conv2d_backward(gy, x, off, w, None, s, 1, 1, m), a.repeat)
        with torch.no_grad():
            conv_f = median_ms(lambda: torch.nn.functional.conv2d(tx, tw, None, s, 1), a.repeat)

        def conv_fb():
            tx.grad = tw.grad = None
            torch.nn.functional.conv2d(tx, tw, None, s, 1).backward(tgy)
        conv_fb_ms = median_ms(conv_fb, a.repeat)
        fb = ours_f + ours_b
        print(f"| {n}, {c}, {h}x{h}, {s} | {ours_f:.2f} | {conv_f:.2f} | {ours_f / conv_f:.2f} | "
              f"{fb:.2f} | {conv_fb_ms:.2f} | {fb / conv_fb_ms:.2f} |")


if __name__ == "__main__":
    main()
