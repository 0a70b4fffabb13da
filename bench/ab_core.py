"""A/B of two builds of the extension in one process: the installed ``deform_conv._core`` (B) against
another build's ``_core`` shared library (A), on the DCNv2 shapes of ``bench/shapes.json`` (with
``--dcnv3``: InternImage-T's four DCNv3 stage layers at 800x1333, numpy API), forward and
forward+backward, calls interleaved A, B, A, B, ... Prints the medians and B / A (the median of
the ratios of adjacent A and B calls, in the order A, B then B, A: the machine's slow phases move
both). DCNv2's forwards and backwards must agree bit for bit (DCNv3's only to rounding: a build
may change its arithmetic).

    $ git worktree add /tmp/base <rev> && (cd /tmp/base && maturin build --release -o /tmp/base-whl)
    $ unzip -o /tmp/base-whl/*.whl 'deform_conv/_core*' -d /tmp/base-core
    $ .venv/bin/python bench/ab_core.py /tmp/base-core/deform_conv/_core.abi3.so --repeat 9
"""
import argparse
import importlib.machinery
import importlib.util
import json
import os
import statistics
import time

import numpy as np

import deform_conv
from deform_conv import _core as core_b

HERE = os.path.dirname(os.path.abspath(__file__))


def load(path):
    """Another build's ``_core``, under a name of its own (its init function is ``PyInit__core``)."""
    loader = importlib.machinery.ExtensionFileLoader("ab_base._core", path)
    spec = importlib.util.spec_from_file_location("ab_base._core", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def forward(core, t, conv):
    try:
        return core.torchvision_forward(t, conv)
    except TypeError:  # a build from before the tuple arguments
        return core.torchvision_forward(*t, *conv)


def backward(core, gy, t, conv):
    try:
        return core.torchvision_backward(gy, t, conv)
    except TypeError:
        x, off, w, b, m = t
        return core.torchvision_backward(gy, x, off, w, b, m, *conv)


def inputs(spec, rng):
    n, c, h, w, cout, k, s, p, d, g, dg = spec
    ho = (h + 2 * p - d * (k - 1) - 1) // s + 1
    wo = (w + 2 * p - d * (k - 1) - 1) // s + 1
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    off = 2 * rng.standard_normal((n, 2 * dg * k * k, ho, wo), dtype=np.float32)
    wt = rng.standard_normal((cout, c // g, k, k), dtype=np.float32) * 0.05
    b = rng.standard_normal(cout, dtype=np.float32)
    m = rng.random((n, dg * k * k, ho, wo), dtype=np.float32)
    gy = rng.standard_normal((n, cout, ho, wo), dtype=np.float32)
    return (x, off, wt, b, m), ([s, s], [p, p], [d, d]), gy


def dcnv3_cases(rng):
    """InternImage-T's stage layers at 800x1333: the op's arguments and an output gradient."""
    for i in range(4):
        h, w, g = 200 >> i, 336 >> i, 4 << i
        x = rng.standard_normal((1, h, w, g * 16), dtype=np.float32)
        off = 2 * rng.standard_normal((1, h, w, g * 18), dtype=np.float32)
        m = rng.random((1, h, w, g * 9), dtype=np.float32)
        gy = rng.standard_normal((1, h, w, g * 16), dtype=np.float32)
        attrs = deform_conv._dcn3_attrs(3, 1, 1, 1, g, 16, 1.0, False)
        yield f"dcnv3_stage{i + 1}", (x, off, m, attrs, "engine"), gy


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="path of build A's _core shared library")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dcnv3", action="store_true", help="the DCNv3 stage layers instead")
    ap.add_argument("--only", nargs="*", help="these cases only (by name)")
    a = ap.parse_args()
    deform_conv.set_num_threads(a.threads)
    core_a = load(a.base)
    core_a.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    if a.dcnv3:
        cases = [(name, (lambda core, t=t: core.dcnv3_forward(*t)),
                  (lambda core, t=t, gy=gy: core.dcnv3_backward(gy, *t)))
                 for name, t, gy in dcnv3_cases(rng)]
    else:
        shapes = json.load(open(os.path.join(HERE, "shapes.json")))["shapes"]
        cases = []
        for name, spec in shapes.items():
            t, conv, gy = inputs(spec, rng)
            cases.append((name, (lambda core, t=t, conv=conv: forward(core, t, conv)),
                          (lambda core, t=t, conv=conv, gy=gy: backward(core, gy, t, conv))))
    cases = [c for c in cases if not a.only or c[0] in a.only]
    print(f"A = {a.base}\nB = installed deform_conv ({core_b.active_isa()}), {a.threads} threads, "
          f"median of {a.repeat}, interleaved")
    print(f"{'shape':18} {'fwd A ms':>9} {'fwd B ms':>9} {'B/A':>6} {'f+b A ms':>9} {'f+b B ms':>9} {'B/A':>6}")
    ratios = {"fwd": [], "fb": []}
    for name, fwd, bwd in cases:
        ya, yb = fwd(core_a), fwd(core_b)
        same = np.allclose(ya, yb, rtol=1e-4, atol=1e-4) if a.dcnv3 else np.array_equal(ya, yb)
        assert same, f"{name}: the two builds disagree"
        for ga, gb in zip(bwd(core_a), bwd(core_b)):
            same = np.allclose(ga, gb, rtol=1e-4, atol=1e-4) if a.dcnv3 else np.array_equal(ga, gb)
            assert same, f"{name}: the two backwards disagree"
        times = {k: [] for k in ("fa", "fb", "ba", "bb")}
        for r in range(a.repeat):
            # A, B then B, A: whichever runs second follows the other's writes.
            pair = (("a", core_a), ("b", core_b))
            for key, core in pair if r % 2 == 0 else pair[::-1]:
                t0 = time.perf_counter()
                fwd(core)
                t1 = time.perf_counter()
                bwd(core)
                t2 = time.perf_counter()
                times["f" + key].append((t1 - t0) * 1e3)
                times["b" + key].append((t2 - t0) * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        rf = statistics.median(b / a for a, b in zip(times["fa"], times["fb"]))
        rb = statistics.median(b / a for a, b in zip(times["ba"], times["bb"]))
        ratios["fwd"].append(rf)
        ratios["fb"].append(rb)
        print(f"{name:18} {med['fa']:9.2f} {med['fb']:9.2f} {rf:6.3f} {med['ba']:9.2f} {med['bb']:9.2f} {rb:6.3f}")
    gm = {k: float(np.exp(np.mean(np.log(v)))) for k, v in ratios.items()}
    print(f"geomean B/A: forward {gm['fwd']:.3f}, forward+backward {gm['fb']:.3f}")


if __name__ == "__main__":
    main()
