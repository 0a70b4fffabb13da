import os

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A fresh seed per test (printed on failure; replay with DEFORM_SEED=...)."""
    seed = int(os.environ.get("DEFORM_SEED", np.random.SeedSequence().entropy % (2**32)))
    print(f"{request.node.name}: DEFORM_SEED={seed}")
    return np.random.default_rng(seed)


def out_size(size, pad_a, pad_b, k, dil, stride):
    num = size + pad_a + pad_b - (dil * (k - 1) + 1)
    return int(num / stride) + 1  # C truncation (torchvision)


def edge_offsets(rng, n, g, kh, kw, ho, wo, h, w, stride, pad, dil):
    """Interleaved offsets mixing Gaussian, integer, half-integer, huge values and exact -1 / last-row landings."""
    k = kh * kw
    off = rng.normal(0, 2, size=(n, g, k, 2, ho, wo))
    for t in range(k):
        i, j = divmod(t, kw)
        by = (np.arange(ho) * stride[0] - pad[0] + i * dil[0])[:, None] + np.zeros((1, wo))
        bx = (np.arange(wo) * stride[1] - pad[1] + j * dil[1])[None, :] + np.zeros((ho, 1))
        for comp, base, size in ((0, by, h), (1, bx, w)):
            kind = rng.integers(0, 8, size=(n, g, ho, wo))
            v = off[:, :, t, comp]
            v[kind == 1] = rng.integers(-3, 4, size=(kind == 1).sum())
            v[kind == 2] = rng.integers(-3, 4, size=(kind == 2).sum()) + 0.5
            v[kind == 3] = rng.choice([-1e7, 1e7], size=(kind == 3).sum())
            edge_lo = np.broadcast_to(-1.0 - base, v.shape)
            edge_hi = np.broadcast_to(size - 1.0 - base, v.shape)
            v[kind == 4] = edge_lo[kind == 4]
            v[kind == 5] = edge_hi[kind == 5]
    return off.reshape(n, 2 * g * k, ho, wo)


def random_config(rng, max_c=6, max_hw=8):
    """A random valid torchvision configuration (symmetric padding)."""
    while True:
        gc = int(rng.integers(1, 3))
        g = int(rng.integers(1, 3))
        c = int(np.lcm(gc, g) * rng.integers(1, max(2, max_c // np.lcm(gc, g) + 1)))
        cout = gc * int(rng.integers(1, 4))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        h, w = int(rng.integers(1, max_hw + 1)), int(rng.integers(1, max_hw + 1))
        stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        pad = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        dil = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        ho = out_size(h, pad[0], pad[0], kh, dil[0], stride[0])
        wo = out_size(w, pad[1], pad[1], kw, dil[1], stride[1])
        if ho >= 1 and wo >= 1:
            return dict(n=int(rng.integers(1, 3)), c=c, h=h, w=w, cout=cout, kh=kh, kw=kw, stride=stride, pad=pad,
                        dil=dil, gc=gc, g=g, ho=ho, wo=wo, mask=bool(rng.integers(0, 2)), bias=bool(rng.integers(0, 2)))


def make_tensors(rng, cfg, dtype=np.float64, edges=True):
    n, c, h, w = cfg["n"], cfg["c"], cfg["h"], cfg["w"]
    k = cfg["kh"] * cfg["kw"]
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((cfg["cout"], c // cfg["gc"], cfg["kh"], cfg["kw"])).astype(dtype)
    if edges:
        off = edge_offsets(rng, n, cfg["g"], cfg["kh"], cfg["kw"], cfg["ho"], cfg["wo"], h, w, cfg["stride"],
                           cfg["pad"], cfg["dil"]).astype(dtype)
    else:
        off = rng.normal(0, 2, (n, 2 * cfg["g"] * k, cfg["ho"], cfg["wo"])).astype(dtype)
    b = rng.standard_normal(cfg["cout"]).astype(dtype) if cfg["bias"] else None
    m = rng.uniform(0, 1, (n, cfg["g"] * k, cfg["ho"], cfg["wo"])).astype(dtype) if cfg["mask"] else None
    return x, off, wt, b, m


def ops_seen(call):
    """The names of the ops torch's dispatcher shows a dispatch mode while ``call()`` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with Seen() as seen:
        call()
    return seen.ops
