"""Inside MindSpore: MindSpore 2.10's own CPU ops.deformable_conv2d against deform_conv's op on
MindSpore Tensors (a Custom pyfunc op with our backward as its bprop: the Custom-op overhead is
included), forward and forward+backward (mindspore.grad for x, weight, offsets, bias), on the
benchmark shapes (bench/shapes.json), float32, PyNative, in one process. Runs in .venv-ms:

    .venv-ms/bin/python bench/mindspore_op.py [--repeat 3] [--their-repeat 1] [--shapes a,b]
"""
import argparse
import json
import pathlib
import sys
import time

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

import deform_conv as dc
import deform_conv.mindspore as dcm
from compare import median_ms  # bench/ is on sys.path when this script runs

ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
SHAPES = json.loads((pathlib.Path(__file__).resolve().parent / "shapes.json").read_text())["shapes"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--their-repeat", type=int, default=1)
    ap.add_argument("--shapes", default=None)
    a = ap.parse_args()
    names = a.shapes.split(",") if a.shapes else list(SHAPES)
    print(f"MindSpore {ms.__version__} CPU (PyNative), deform_conv {dc.active_isa()} kernels, {dc.num_threads()} threads;"
          f" medians of {a.repeat} (ours) and {a.their_repeat} (MindSpore) runs after one warm-up")
    print("| shape | MindSpore fwd ms | ours fwd ms | x | MindSpore fwd+bwd ms | ours fwd+bwd ms | x |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        n, c, h, w, cout, k, s, p, d, g, dg = SHAPES[name]
        ho = (h + 2 * p - d * (k - 1) - 1) // s + 1
        wo = (w + 2 * p - d * (k - 1) - 1) // s + 1
        rng = np.random.default_rng(0)
        x = Tensor(rng.standard_normal((n, c, h, w), dtype=np.float32))
        wt = Tensor((rng.standard_normal((cout, c // g, k, k)) / np.sqrt(c // g * k * k)).astype(np.float32))
        kk = dg * k * k
        packed = np.concatenate([2 * rng.standard_normal((n, 2 * kk, ho, wo)),
                                 rng.random((n, kk, ho, wo))], axis=1).astype(np.float32)
        off, b = Tensor(packed), Tensor(rng.standard_normal(cout).astype(np.float32))
        attrs = ((k, k), (1, 1, s, s), (p, p, p, p), b, (1, 1, d, d), g, dg, True)

        def theirs(x_, w_, o_, b_):
            return ops.deformable_conv2d(x_, w_, o_, attrs[0], attrs[1], attrs[2], b_, *attrs[4:])

        def ours(x_, w_, o_, b_):
            return dcm.deformable_conv2d(x_, w_, o_, attrs[0], attrs[1], attrs[2], b_, *attrs[4:])

        err = float(np.abs(ours(x, wt, off, b).asnumpy() - theirs(x, wt, off, b).asnumpy()).max())
        row = []
        for f, rep in ((theirs, a.their_repeat), (ours, a.repeat)):
            fwd = median_ms(lambda: f(x, wt, off, b).asnumpy(), rep) / 1e3
            grad = ms.grad(lambda *t: f(*t).sum(), grad_position=(0, 1, 2, 3))
            fb = median_ms(lambda: [t.asnumpy() for t in grad(x, wt, off, b)], rep) / 1e3
            row.append((fwd, fb))
        (tf, tfb), (of, ofb) = row
        print(f"| {name} | {tf * 1e3:.0f} | {of * 1e3:.1f} | {tf / of:.0f} | {tfb * 1e3:.0f} | {ofb * 1e3:.1f} | "
              f"{tfb / ofb:.0f} |  (max |ours - MindSpore| = {err:.1e})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
