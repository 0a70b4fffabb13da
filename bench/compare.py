"""Side-by-side benchmark: deform_conv against torch's plain conv2d, torchvision, onnxruntime and OpenVINO.

Every implementation runs in this one process on the same inputs (float32, offsets ~ N(0, 2^2),
mask ~ U(0, 1), the shapes of bench/shapes.json), with the same thread count; the table
reports medians and ratios. Each peer's output is checked against ours before it is timed.

    .venv/bin/pip install -r bench/requirements.txt          # OpenVINO (optional: skipped when absent)
    .venv/bin/python bench/compare.py [--threads 2] [--repeat 7] [--shapes a,b] [--memory] [--json out.json]
"""
import argparse
import json
import math
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

import deform_conv as dc

torch = torchvision = None  # imported in main(): the memory child must not carry torch's footprint

HERE = pathlib.Path(__file__).resolve().parent
SHAPES_FILE = HERE / "shapes.json"  # the one list of benchmark shapes (the CLI embeds it too)


def load_shapes():
    return json.loads(SHAPES_FILE.read_text())["shapes"]


def median_ms(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2] * 1e3


def inputs(spec, seed=0):
    n, c, h, w, cout, k, s, p, d, g, dg = spec
    rng = np.random.default_rng(seed)
    ho = (h + 2 * p - d * (k - 1) - 1) // s + 1
    wo = (w + 2 * p - d * (k - 1) - 1) // s + 1
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = (rng.standard_normal((cout, c // g, k, k)) / math.sqrt(c // g * k * k)).astype(np.float32)
    off = (2.0 * rng.standard_normal((n, 2 * dg * k * k, ho, wo))).astype(np.float32)
    mask = rng.uniform(0, 1, (n, dg * k * k, ho, wo)).astype(np.float32)
    b = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    return x, off, wt, mask, b, (ho, wo)


def ort_session(spec, x, off, wt, mask, b, threads):
    import onnxruntime as ort
    from onnx import TensorProto, helper
    n, c, h, w, cout, k, s, p, d, g, dg = spec
    node = helper.make_node("DeformConv", ["X", "W", "offset", "B", "mask"], ["Y"], dilations=[d, d], group=g,
                            kernel_shape=[k, k], offset_group=dg, pads=[p, p, p, p], strides=[s, s])
    ins = [helper.make_tensor_value_info(nm, TensorProto.FLOAT, list(a.shape))
           for nm, a in (("X", x), ("W", wt), ("offset", off), ("B", b), ("mask", mask))]
    graph = helper.make_graph([node], "dcn", ins, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = dict(X=x, W=wt, offset=off, B=b, mask=mask)
    return lambda: sess.run(None, feed)[0]


def openvino_model(spec, x, off, wt, mask, b, threads):
    import openvino as ov
    import openvino.opset8 as ops
    n, c, h, w, cout, k, s, p, d, g, dg = spec
    px, poff, pw, pm = (ops.parameter(list(a.shape), np.float32) for a in (x, off, wt, mask))
    y = ops.deformable_convolution(px, poff, pw, [s, s], [p, p], [p, p], [d, d], mask=pm, group=g,
                                   deformable_group=dg, bilinear_interpolation_pad=True)
    y = ops.add(y, ops.constant(b.reshape(1, -1, 1, 1)))
    model = ov.Model([y], [px, poff, pw, pm], "dcn")
    core = ov.Core()
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    feed = [x, off, wt, mask]
    return lambda: req.infer(feed)[0]


def check(name, got, want):
    err = float(np.abs(np.asarray(got) - want).max())
    scale = float(np.abs(want).max())
    if not err <= 1e-3 * (1 + scale):
        raise SystemExit(f"{name} disagrees with deform_conv: max error {err} (scale {scale})")
    return err


def geomean(v):
    """Geometric mean of the measured values; absent peers (nan) are left out. None if none."""
    v = [x for x in v if x and x == x]
    return math.exp(sum(math.log(x) for x in v) / len(v)) if v else None


def fmt_geo(v, fmt="{:.2f}"):
    """A geomean for the table: '-' when no shape had the peer."""
    return "-" if v is None else fmt.format(v)


def hwm_mib():
    """Peak resident memory of this address space (VmHWM). ru_maxrss would carry the parent's peak
    across fork+exec on Linux, and the parent has torch loaded."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(spec_json, batch):
    """Runs in a subprocess: peak RSS of forward+backward beyond inputs and outputs, in MiB."""
    spec = json.loads(spec_json)
    spec[0] = batch
    x, off, wt, mask, b, (ho, wo) = inputs(spec)
    s, p, d = spec[6], spec[7], spec[8]
    gy = np.ones((spec[0], spec[4], ho, wo), np.float32)
    dc.set_num_threads(2)
    base = hwm_mib()  # inputs allocated and touched
    y = dc.deform_conv2d(x, off, wt, b, s, p, d, mask)
    g = dc.deform_conv2d_backward(gy, x, off, wt, b, s, p, d, mask)
    peak = hwm_mib()
    out_bytes = sum(a.nbytes for a in (y, g.input, g.offset, g.mask, g.weight, g.bias)) / 2**20
    in_bytes = sum(a.nbytes for a in (x, off, wt, mask, b, gy)) / 2**20
    print(json.dumps(dict(batch=batch, inputs_mib=in_bytes, outputs_mib=out_bytes, peak_mib=peak,
                          extra_mib=peak - base - out_bytes)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--shapes", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--no-torchvision", action="store_true", help="skip torchvision (slow)")
    ap.add_argument("--memory", action="store_true", help="also report peak RSS at batch 1 and 32")
    ap.add_argument("--json", default=None, help="write the raw numbers here")
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_child:
        return memory_child(a.memory_child[0], int(a.memory_child[1]))
    global torch, torchvision
    import torch
    import torchvision

    torch.set_num_threads(a.threads)
    dc.set_num_threads(a.threads)
    shapes = load_shapes()
    if a.shapes:
        shapes = {k: v for k, v in shapes.items() if k in a.shapes.split(",")}
    print(f"threads {a.threads}, median of {a.repeat}; deform_conv kernels: {dc.active_isa()}; "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    rows = []
    for name, spec in shapes.items():
        n, c, h, w, cout, k, s, p, d, g, dg = spec
        x, off, wt, mask, b, (ho, wo) = inputs(spec)
        flop = 2.0 * n * cout * ho * wo * (c // g) * k * k
        tx, toff, tw, tm, tb = (torch.from_numpy(v) for v in (x, off, wt, mask, b))
        ours = dc.deform_conv2d(x, off, wt, b, s, p, d, mask)
        r = dict(shape=name, gflop=flop / 1e9)
        r["ours_fwd"] = median_ms(lambda: dc.deform_conv2d(x, off, wt, b, s, p, d, mask), a.repeat)
        gy = np.ones_like(ours)
        r["ours_bwd"] = median_ms(lambda: dc.deform_conv2d_backward(gy, x, off, wt, b, s, p, d, mask), a.repeat)
        r["ours_fb"] = r["ours_fwd"] + r["ours_bwd"]
        r["conv_fwd"] = median_ms(lambda: torch.nn.functional.conv2d(tx, tw, tb, s, p, d, g), a.repeat)
        cx, cw, cb = (t.clone().requires_grad_(True) for t in (tx, tw, tb))
        tgy = torch.from_numpy(gy)

        def conv_fb():
            cx.grad = cw.grad = cb.grad = None
            torch.nn.functional.conv2d(cx, cw, cb, s, p, d, g).backward(tgy)
        r["conv_fb"] = median_ms(conv_fb, a.repeat)
        try:
            fn = ort_session(spec, x, off, wt, mask, b, a.threads)
            r["ort_err"] = check("onnxruntime", fn(), ours)
            r["ort_fwd"] = median_ms(fn, a.repeat)
        except ImportError:
            r["ort_fwd"] = float("nan")
        try:
            fn = openvino_model(spec, x, off, wt, mask, b, a.threads)
            r["ov_err"] = check("OpenVINO", fn(), ours)
            r["ov_fwd"] = median_ms(fn, a.repeat)
        except ImportError:
            r["ov_fwd"] = float("nan")
        if not a.no_torchvision:
            rep = max(3, a.repeat // 2)
            r["tv_err"] = check("torchvision", torchvision.ops.deform_conv2d(tx, toff, tw, tb, s, p, d, tm).numpy(), ours)
            r["tv_fwd"] = median_ms(lambda: torchvision.ops.deform_conv2d(tx, toff, tw, tb, s, p, d, tm), rep)
            vs = [t.clone().requires_grad_(True) for t in (tx, toff, tw, tm, tb)]

            def tv_fb():
                for v in vs:
                    v.grad = None
                torchvision.ops.deform_conv2d(vs[0], vs[1], vs[2], vs[4], s, p, d, vs[3]).backward(tgy)
            r["tv_fb"] = median_ms(tv_fb, rep)
        rows.append(r)
        print(f"  measured {name}", file=sys.stderr)

    def f(v, fmt="{:8.2f}"):
        return fmt.format(v) if v == v else "       -"

    print("\nForward, float32 (ms; ratios = their time / ours, conv = ours / plain conv)")
    print("| shape | GFLOP | ours ms | GFLOP/s | conv2d ms | ours/conv | onnxruntime ms | ×ours | OpenVINO ms | ×ours | torchvision ms | ×ours |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} | {r['gflop']:.2f} | {r['ours_fwd']:.2f} | {r['gflop'] / r['ours_fwd'] * 1e3:.0f} | "
              f"{r['conv_fwd']:.2f} | {r['ours_fwd'] / r['conv_fwd']:.2f} | {f(r['ort_fwd'])} | "
              f"{f(r['ort_fwd'] / r['ours_fwd'])} | {f(r['ov_fwd'])} | {f(r['ov_fwd'] / r['ours_fwd'])} | "
              f"{f(r.get('tv_fwd', float('nan')))} | {f(r.get('tv_fwd', float('nan')) / r['ours_fwd'])} |")
    def best(r):
        present = [v for v in (r["ort_fwd"], r["ov_fwd"]) if v == v]
        return min(present) / r["ours_fwd"] if present else float("nan")
    best_peer = geomean([best(r) for r in rows])
    print(f"\ngeomean ours/conv2d forward: {fmt_geo(geomean([r['ours_fwd'] / r['conv_fwd'] for r in rows]))}   "
          f"geomean min(onnxruntime, OpenVINO)/ours: {fmt_geo(best_peer)}")
    print("\nForward + backward (all gradients), float32 (ms)")
    print("| shape | ours ms | conv2d ms | ours/conv | torchvision ms | ×ours |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        tv = r.get("tv_fb", float("nan"))
        print(f"| {r['shape']} | {r['ours_fb']:.2f} | {r['conv_fb']:.2f} | {r['ours_fb'] / r['conv_fb']:.2f} | {f(tv)} | "
              f"{f(tv / r['ours_fb'])} |")
    print(f"\ngeomean ours/conv2d forward+backward: {fmt_geo(geomean([r['ours_fb'] / r['conv_fb'] for r in rows]))}   "
          f"geomean torchvision/ours: {fmt_geo(geomean([r.get('tv_fb', float('nan')) / r['ours_fb'] for r in rows]), '{:.1f}')}")
    if a.memory:
        spec = shapes.get("resnet_c3_dcn_b4", next(iter(shapes.values())))
        print("\nMemory (resnet_c3_dcn_b4 layer, forward + backward, deform_conv)")
        print("| batch | inputs MiB | outputs+grads MiB | peak RSS MiB | extra beyond inputs/outputs MiB |")
        print("|---:|---:|---:|---:|---:|")
        for batch in (1, 32):
            out = subprocess.run([sys.executable, __file__, "--memory-child", json.dumps(spec), str(batch)],
                                 capture_output=True, text=True, check=True).stdout
            m = json.loads(out.strip().splitlines()[-1])
            print(f"| {batch} | {m['inputs_mib']:.0f} | {m['outputs_mib']:.0f} | {m['peak_mib']:.0f} | {m['extra_mib']:.0f} |")
            rows.append(dict(memory=m))
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
