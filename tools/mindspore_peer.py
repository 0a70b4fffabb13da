"""deform_conv's MindSpore convention against the live MindSpore 2.10 CPU kernel: forward and gradients.

MindSpore is large and pins its own numpy, so it lives in its own venv rather than in the test venv:

    python3 -m venv /tmp/msvenv && /tmp/msvenv/bin/pip install mindspore==2.10.0 "numpy<2"
    .venv/bin/maturin build --release -o /tmp/wheels && /tmp/msvenv/bin/pip install /tmp/wheels/deform_conv-*.whl
    /tmp/msvenv/bin/python tools/mindspore_peer.py | tee tests/peers/mindspore-2.10.txt

Random configurations (groups with deformable groups, non-square and even kernels, strides and
dilations 1-3, asymmetric pads) with edge offsets (integers, half-integers, exactly -1 and the
last row, huge). Exits non-zero on any disagreement.
"""
import sys

import mindspore as ms
import numpy as np
from mindspore import ops

import deform_conv as dc

ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")


def edge(rng, base, size, shape):
    v = rng.normal(0, 2, shape)
    kind = rng.integers(0, 7, shape)
    v = np.where(kind == 1, rng.integers(-3, 4, shape), v)
    v = np.where(kind == 2, rng.integers(-3, 4, shape) + 0.5, v)
    v = np.where(kind == 3, -1.0 - base, v)
    v = np.where(kind == 4, size - 1.0 - base, v)
    v = np.where(kind == 5, rng.choice([-1e4, 1e4], shape), v)
    return v


def config(rng):
    while True:
        gc, g = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        c = int(np.lcm(gc, g) * rng.integers(1, 4))
        cout = gc * int(rng.integers(1, 4))
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        h, w = int(rng.integers(1, 10)), int(rng.integers(1, 10))
        s = [int(rng.integers(1, 4)), int(rng.integers(1, 4))]
        d = [int(rng.integers(1, 4)), int(rng.integers(1, 4))]
        pad = [int(rng.integers(0, 3)) for _ in range(4)]
        ho = (h + pad[0] + pad[1] - d[0] * (kh - 1) - 1) // s[0] + 1
        wo = (w + pad[2] + pad[3] - d[1] * (kw - 1) - 1) // s[1] + 1
        if ho >= 1 and wo >= 1:
            return dict(n=int(rng.integers(1, 3)), c=c, h=h, w=w, cout=cout, kh=kh, kw=kw, s=s, d=d, pad=pad, gc=gc,
                        g=g, ho=ho, wo=wo)


def main():
    rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 2026)
    worst = {"output": 0.0, "grad x": 0.0, "grad weight": 0.0, "grad offsets": 0.0}
    at_minus_one = 0
    for case in range(40):
        cf = config(rng)
        n, k, ho, wo = cf["n"], cf["kh"] * cf["kw"], cf["ho"], cf["wo"]
        x = rng.standard_normal((n, cf["c"], cf["h"], cf["w"])).astype(np.float32)
        wt = rng.standard_normal((cf["cout"], cf["c"] // cf["gc"], cf["kh"], cf["kw"])).astype(np.float32)
        b = rng.standard_normal(cf["cout"]).astype(np.float32)
        ii, jj = np.divmod(np.arange(k), cf["kw"])
        by = (np.arange(ho)[None, :, None] * cf["s"][0] - cf["pad"][0] + (ii * cf["d"][0])[:, None, None])
        bx = (np.arange(wo)[None, None, :] * cf["s"][1] - cf["pad"][2] + (jj * cf["d"][1])[:, None, None])
        shape = (n, cf["g"], k, ho, wo)
        dy = edge(rng, np.broadcast_to(by, shape), cf["h"], shape)
        dx = edge(rng, np.broadcast_to(bx, shape), cf["w"], shape)
        at_minus_one += int(((by + dy == -1) | (bx + dx == -1)).sum())
        mask = rng.uniform(0, 1, shape)
        packed = np.concatenate([dx.reshape(n, -1, ho, wo), dy.reshape(n, -1, ho, wo), mask.reshape(n, -1, ho, wo)],
                                axis=1).astype(np.float32)
        gy = rng.standard_normal((n, cf["cout"], ho, wo)).astype(np.float32)
        attrs = dict(kernel_size=(cf["kh"], cf["kw"]), strides=(1, 1, *cf["s"]), padding=tuple(cf["pad"]),
                     dilations=(1, 1, *cf["d"]), groups=cf["gc"], deformable_groups=cf["g"])

        def f(x_, w_, o_):
            y = ops.deformable_conv2d(x_, w_, o_, attrs["kernel_size"], attrs["strides"], attrs["padding"],
                                      ms.Tensor(b), attrs["dilations"], attrs["groups"], attrs["deformable_groups"], True)
            return y

        y_ms = f(ms.Tensor(x), ms.Tensor(wt), ms.Tensor(packed)).asnumpy()
        loss = lambda x_, w_, o_: (f(x_, w_, o_) * ms.Tensor(gy)).sum()
        gx_ms, gw_ms, go_ms = (t.asnumpy() for t in ms.grad(loss, grad_position=(0, 1, 2))(
            ms.Tensor(x), ms.Tensor(wt), ms.Tensor(packed)))
        y = dc.mindspore.deformable_conv2d(x, wt, packed, bias=b, **attrs)
        gx, gw, go, _ = dc.mindspore.deformable_conv2d_backward(gy, x, wt, packed, bias=b, **attrs)
        for name, ours, theirs in (("output", y, y_ms), ("grad x", gx, gx_ms), ("grad weight", gw, gw_ms),
                                   ("grad offsets", go, go_ms)):
            err = float(np.abs(ours - theirs).max() / (1.0 + np.abs(theirs).max()))
            worst[name] = max(worst[name], err)
            if not err <= 1e-4:
                print(f"case {case} {cf}: {name} differs from MindSpore by {err:.2e}")
                sys.exit(1)
    print(f"MindSpore {ms.__version__} CPU vs deform_conv (engine, {dc.active_isa()}): 40 random configurations,"
          f" {at_minus_one} samples exactly on -1")
    for name, err in worst.items():
        print(f"  {name:13s} max |ours - MindSpore| / (1 + max|MindSpore|) = {err:.2e}")
    print("  all within 1e-4 (float32)")


if __name__ == "__main__":
    main()
