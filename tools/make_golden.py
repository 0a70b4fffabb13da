"""Golden vectors from the live peer: torchvision.ops.deform_conv2d in float64 with autograd.

Writes crates/deform-conv/tests/golden/<case>.npz, each holding
  params   int64 [sh, sw, pad_top, pad_bottom, pad_left, pad_right, dh, dw, has_mask, has_bias]
  input, offset (interleaved dy, dx), mask, weight, bias, grad_output       (float64)
  output, g_input, g_offset, g_mask, g_weight, g_bias                       (torchvision autograd)
  g_offset_gated   g_offset with torch_npu's gate applied: zero wherever the sample is not strictly
                   inside (-1, H) x (-1, W) (SPEC 2; torchvision itself has no gate)

Asymmetric padding, which torchvision cannot express, is made exact by zero-padding the input
explicitly and calling torchvision with padding 0: a zero pixel and the zero extension of the
image read the same, in value and in every gradient.

Offsets mix every edge SPEC 4 names: Gaussian, integers, half-integers, about +-1e7, and samples
landing exactly on -1 and on H-1 / W-1 (where the gate matters).

Run:  .venv/bin/python tools/make_golden.py   (needs torch and torchvision)
"""
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/deform-conv/tests/golden"

# name: (N, C, H, W, Cout, kh, kw, stride, pads(t,b,l,r), dilation, groups, deformable_groups, mask, bias)
CASES = {
    "basic_3x3_mask_bias": (1, 4, 7, 7, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, 1, True, True),
    "v1_even_2x2_stride2": (2, 3, 8, 6, 4, 2, 2, (2, 2), (0, 0, 0, 0), (1, 1), 1, 1, False, False),
    "groups2_dg2_3x2_dil2": (1, 4, 9, 8, 6, 3, 2, (1, 1), (2, 2, 1, 1), (2, 2), 2, 2, True, True),
    "groups3_dg2_crossing": (2, 6, 6, 7, 3, 3, 3, (1, 2), (1, 1, 1, 1), (1, 1), 3, 2, True, False),
    "image_1x1": (2, 3, 1, 1, 2, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, 1, True, True),
    "stride3_dil3_1x3": (1, 5, 10, 11, 3, 1, 3, (3, 3), (0, 0, 2, 2), (3, 3), 1, 5, True, True),
    "odd_channels_c5": (2, 5, 5, 6, 3, 3, 3, (1, 1), (1, 1, 1, 1), (2, 1), 1, 1, True, True),
    "asym_pads_mask": (1, 3, 6, 5, 4, 3, 3, (1, 1), (2, 0, 0, 1), (1, 1), 1, 3, True, True),
    "asym_pads_v1_stride2": (1, 2, 7, 7, 2, 3, 3, (2, 1), (0, 3, 1, 2), (1, 2), 1, 1, False, True),
    "trunc_rounding_small": (1, 2, 2, 5, 2, 5, 3, (2, 1), (1, 1, 1, 1), (1, 1), 1, 1, True, True),
    "kernel_5x5_dg4": (1, 8, 6, 6, 4, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 2, 4, True, True),
}


def edge_offsets(rng, n, g, kh, kw, ho, wo, h, w, sh, sw, pt, pl, dh, dw):
    """Interleaved offsets [n, 2*g*kh*kw, ho, wo] mixing every edge value."""
    k = kh * kw
    dy = np.zeros((n, g, k, ho, wo))
    dx = np.zeros((n, g, k, ho, wo))
    base_y = (np.arange(ho)[:, None] * sh - pt + (np.arange(kh) * dh)[:, None, None])  # [kh, ho, 1]
    base_x = (np.arange(wo)[:, None] * sw - pl + (np.arange(kw) * dw)[:, None, None])  # [kw, wo, 1]
    for t in range(k):
        i, j = divmod(t, kw)
        by = np.broadcast_to(base_y[i][:, 0][:, None], (ho, wo))
        bx = np.broadcast_to(base_x[j][:, 0][None, :], (ho, wo))
        for a in range(n):
            for gg in range(g):
                for comp, base, size, arr in ((0, by, h, dy), (1, bx, w, dx)):
                    kind = rng.integers(0, 8, size=(ho, wo))
                    val = rng.normal(0, 2, size=(ho, wo))
                    val = np.where(kind == 1, rng.integers(-3, 4, size=(ho, wo)).astype(float), val)
                    val = np.where(kind == 2, rng.integers(-3, 4, size=(ho, wo)) + 0.5, val)
                    val = np.where(kind == 3, rng.choice([-1e7, 1e7], size=(ho, wo)) + rng.normal(0, 1, (ho, wo)), val)
                    val = np.where(kind == 4, -1.0 - base, val)  # lands exactly on -1
                    val = np.where(kind == 5, (size - 1.0) - base, val)  # lands exactly on the last row/col
                    val = np.where(kind == 6, (size - 1.0) - base + rng.uniform(0, 1, (ho, wo)), val)  # between last and outside
                    arr[a, gg, t] = val
    off = np.stack([dy, dx], axis=3)  # [n, g, k, 2, ho, wo]
    return off.reshape(n, 2 * g * k, ho, wo)


def make(name, spec, seed):
    n, c, h, w, cout, kh, kw, (sh, sw), (pt, pb, pl, pr), (dh, dw), groups, dg, use_mask, use_bias = spec
    rng = np.random.default_rng(seed)
    ho = int((h + pt + pb - (dh * (kh - 1) + 1)) / sh) + 1  # C truncation, as torchvision
    wo = int((w + pl + pr - (dw * (kw - 1) + 1)) / sw) + 1
    x = rng.normal(size=(n, c, h, w))
    wt = rng.normal(size=(cout, c // groups, kh, kw))
    b = rng.normal(size=(cout,)) if use_bias else None
    off = edge_offsets(rng, n, dg, kh, kw, ho, wo, h, w, sh, sw, pt, pl, dh, dw)
    mask = rng.uniform(-0.5, 1.5, size=(n, dg * kh * kw, ho, wo)) if use_mask else None
    gy = rng.normal(size=(n, cout, ho, wo))

    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(wt, requires_grad=True)
    toff = torch.tensor(off, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True) if use_bias else None
    tm = torch.tensor(mask, requires_grad=True) if use_mask else None
    symmetric = pt == pb and pl == pr
    if symmetric:
        y = deform_conv2d(tx, toff, tw, tb, stride=(sh, sw), padding=(pt, pl), dilation=(dh, dw), mask=tm)
    else:
        xp = F.pad(tx, (pl, pr, pt, pb))
        y = deform_conv2d(xp, toff, tw, tb, stride=(sh, sw), padding=(0, 0), dilation=(dh, dw), mask=tm)
    assert y.shape == (n, cout, ho, wo), (name, y.shape)
    y.backward(torch.tensor(gy))

    # torch_npu's gate: every gradient of a sample outside the open box (-1, H) x (-1, W) is zero.
    k = kh * kw
    ii, jj = np.divmod(np.arange(k), kw)
    py = (np.arange(ho)[None, :, None] * sh - pt + (ii * dh)[:, None, None]) + off[:, 0::2].reshape(n, dg, k, ho, wo)
    px = (np.arange(wo)[None, None, :] * sw - pl + (jj * dw)[:, None, None]) + off[:, 1::2].reshape(n, dg, k, ho, wo)
    inside = (py > -1) & (py < h) & (px > -1) & (px < w)
    inside2 = np.repeat(inside.reshape(n, dg * k, ho, wo), 2, axis=1)
    g_off = toff.grad.numpy()
    arrays = dict(
        params=np.array([sh, sw, pt, pb, pl, pr, dh, dw, int(use_mask), int(use_bias)], dtype=np.int64),
        input=x, offset=off, weight=wt, grad_output=gy, output=y.detach().numpy(),
        g_input=tx.grad.numpy(), g_offset=g_off, g_offset_gated=np.where(inside2, g_off, 0.0),
        g_weight=tw.grad.numpy(),
    )
    if use_mask:
        arrays.update(mask=mask, g_mask=tm.grad.numpy())
    if use_bias:
        arrays.update(bias=b, g_bias=tb.grad.numpy())
    np.savez(OUT / f"{name}.npz", **arrays)
    at_minus_one = int(((py == -1) | (px == -1)).sum())
    print(f"{name:24s} out {tuple(y.shape)}  samples exactly at -1: {at_minus_one}")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for seed, (name, spec) in enumerate(CASES.items()):
        make(name, spec, 1000 + seed)
