"""Half precision: float16 (numpy, torch) and bfloat16 (torch) stored in half, computed in float32.

Against float64 on the same half-rounded inputs, every output and gradient is within the output's
own rounding (2^-11 relative for float16, 2^-8 for bfloat16) plus float32 accumulation error.
"""
import numpy as np
import pytest
import torch

import deform_conv as dc
import deform_conv.torch as dct
from conftest import make_tensors, random_config

EPS = {np.float16: 2.0**-11, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def within(got, want, eps, name):
    got = np.asarray(got, dtype=np.float64)
    scale = np.abs(want).max(initial=0.0)
    bad = np.abs(got - want) > eps * np.abs(want) + 2e-5 * (1 + scale)
    assert not bad.any(), f"{name}: worst {np.abs(got - want).max()} (scale {scale})"


def test_numpy_float16_forward_and_backward(rng):
    for _ in range(10):
        cfg = random_config(rng, max_c=12, max_hw=10)
        x, off, w, b, m = (None if a is None else a.astype(np.float16) for a in make_tensors(rng, cfg, edges=False))
        gy = rng.standard_normal((cfg["n"], cfg["cout"], cfg["ho"], cfg["wo"])).astype(np.float16)
        args = (x, off, w, b, cfg["stride"], cfg["pad"], cfg["dil"], m)
        args64 = tuple(a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in args)
        y = dc.deform_conv2d(*args)
        assert y.dtype == np.float16
        within(y, dc.deform_conv2d(*args64), EPS[np.float16], "output")
        g, g64 = dc.deform_conv2d_backward(gy, *args), dc.deform_conv2d_backward(gy.astype(np.float64), *args64)
        for name in ("input", "offset", "weight"):
            assert getattr(g, name).dtype == np.float16
            within(getattr(g, name), getattr(g64, name), EPS[np.float16], f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_half_dtypes_with_autograd(rng, dtype):
    for _ in range(6):
        cfg = random_config(rng, max_c=12, max_hw=10)
        arrays = make_tensors(rng, cfg, edges=False)
        t = [None if a is None else torch.tensor(a).to(dtype).requires_grad_(True) for a in arrays]
        t64 = [None if a is None else a.detach().double().requires_grad_(True) for a in t]
        y = dct.deform_conv2d(t[0], t[1], t[2], t[3], cfg["stride"], cfg["pad"], cfg["dil"], t[4])
        y64 = dct.deform_conv2d(t64[0], t64[1], t64[2], t64[3], cfg["stride"], cfg["pad"], cfg["dil"], t64[4])
        assert y.dtype == dtype
        within(y.detach().float().numpy(), y64.detach().numpy(), EPS[dtype], "output")
        gy = torch.tensor(rng.standard_normal(tuple(y.shape))).to(dtype)
        y.backward(gy)
        y64.backward(gy.double())
        for name, a, a64 in zip(("input", "offset", "weight"), t[:3], t64[:3]):
            assert a.grad.dtype == dtype
            within(a.grad.float().numpy(), a64.grad.numpy(), EPS[dtype], f"grad {name}")
