"""Half precision on the benchmark shapes: error against float64 and time beside float32.

For each shape the inputs are rounded to the half type once; float64 on those same rounded
inputs is the truth, so the error measured is the implementation's own (arithmetic and output
rounding), not the inputs' quantisation. torchvision on CPU computes in the half type itself.

    .venv/bin/python bench/half_precision.py [--threads 2] [--repeat 5]
"""
import argparse
import json
import pathlib

import numpy as np
import torch
import torchvision

import deform_conv as dc
import deform_conv.torch as dct
from compare import median_ms  # bench/ is on sys.path when this script runs

SHAPES = json.loads((pathlib.Path(__file__).resolve().parent / "shapes.json").read_text())["shapes"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dc.set_num_threads(a.threads)
    print("| shape | f32 ms | f16 ms | bf16 ms | f16 rel. error | bf16 rel. error | torchvision f16 rel. error |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    worst = {"f16": 0.0, "bf16": 0.0}
    for name, (n, c, h, w, cout, k, s, p, d, g, dg) in SHAPES.items():
        rng = np.random.default_rng(1)
        ho = (h + 2 * p - d * (k - 1) - 1) // s + 1
        wo = (w + 2 * p - d * (k - 1) - 1) // s + 1
        x = rng.standard_normal((n, c, h, w))
        wt = rng.standard_normal((cout, c // g, k, k)) / np.sqrt(c // g * k * k)
        off = 2.0 * rng.standard_normal((n, 2 * dg * k * k, ho, wo))
        m = rng.uniform(0, 1, (n, dg * k * k, ho, wo))
        row = {}
        for label, dt in (("f16", torch.float16), ("bf16", torch.bfloat16)):
            t = [torch.tensor(v).to(dt) for v in (x, off, wt, m)]
            truth = dct.deform_conv2d(t[0].double(), t[1].double(), t[2].double(), None, s, p, d, t[3].double()).numpy()
            y = dct.deform_conv2d(t[0], t[1], t[2], None, s, p, d, t[3]).double().numpy()
            row[label] = np.abs(y - truth).max() / np.abs(truth).max()
            worst[label] = max(worst[label], row[label])
            if label == "f16":
                try:
                    ytv = torchvision.ops.deform_conv2d(t[0], t[1], t[2], None, s, p, d, t[3]).double().numpy()
                    row["tv"] = np.abs(ytv - truth).max() / np.abs(truth).max()
                except RuntimeError as e:
                    row["tv"] = float("nan")
                    print(f"  torchvision float16 on CPU: {str(e).splitlines()[0]}")
        x32, off32, w32, m32 = (v.astype(np.float32) for v in (x, off, wt, m))
        x16, off16, w16, m16 = (v.astype(np.float16) for v in (x, off, wt, m))
        tb = [torch.tensor(v).to(torch.bfloat16) for v in (x, off, wt, m)]
        t32 = median_ms(lambda: dc.deform_conv2d(x32, off32, w32, None, s, p, d, m32), a.repeat)
        t16 = median_ms(lambda: dc.deform_conv2d(x16, off16, w16, None, s, p, d, m16), a.repeat)
        tbf = median_ms(lambda: dct.deform_conv2d(tb[0], tb[1], tb[2], None, s, p, d, tb[3]), a.repeat)
        print(f"| {name} | {t32:.2f} | {t16:.2f} | {tbf:.2f} | {row['f16']:.1e} | {row['bf16']:.1e} | {row['tv']:.1e} |")
    print(f"\nworst relative error (max |err| / max |truth|): float16 {worst['f16']:.1e}, bfloat16 {worst['bf16']:.1e}")


if __name__ == "__main__":
    main()
