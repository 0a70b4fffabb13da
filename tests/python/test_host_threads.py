"""Under deform_conv.torch the engine runs on torch's OpenMP threads, reads tensors in place and
returns the same bits whichever executor and thread count run it."""
import numpy as np
import pytest
import torch

import deform_conv as dc
import deform_conv.torch as dct
from conftest import make_tensors, random_config


def run_all(args, gy):
    """Forward and every gradient through autograd, as float64-comparable arrays of bits."""
    ts = [a.detach().clone().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor) else a
          for a in args]
    x, off, w, b, stride, pad, dil, m = ts
    y = dct.deform_conv2d(x, off, w, b, stride, pad, dil, m)
    y.backward(gy)
    out = [y.detach(), x.grad, off.grad, w.grad] + ([m.grad] if m is not None else [])
    return [o.float().numpy().view(np.int32).copy() for o in out]


def test_torch_ops_run_on_torchs_openmp_threads():
    assert dct.executor() == "openmp", "torch's libgomp was not found: torch ops would contend with torch"


def test_same_bits_for_every_executor_and_thread_count(rng):
    before = torch.get_num_threads()
    try:
        for _ in range(3):
            cfg = random_config(rng, max_c=24, max_hw=20)
            arrays = make_tensors(rng, cfg, np.float32)
            x, off, w, b, m = (None if a is None else torch.from_numpy(a) for a in arrays)
            args = (x, off, w, b, cfg["stride"], cfg["pad"], cfg["dil"], m)
            gy = torch.from_numpy(rng.standard_normal((cfg["n"], cfg["cout"], cfg["ho"], cfg["wo"])).astype(np.float32))
            results = []
            for executor, threads in (("openmp", 1), ("openmp", 2), ("openmp", 3), ("rayon", 2)):
                dct.set_executor(executor)
                torch.set_num_threads(threads)
                dc.set_num_threads(threads)
                results.append(run_all(args, gy))
            for r in results[1:]:
                for a, b_ in zip(results[0], r):
                    assert np.array_equal(a, b_)
    finally:
        dct.set_executor("openmp")
        torch.set_num_threads(before)
        dc.set_num_threads(0)


def test_strided_and_channels_last_and_bfloat16_are_read_in_place(rng):
    cfg = dict(n=2, c=6, h=9, w=7, cout=4, kh=3, kw=3, stride=(1, 1), pad=(1, 1), dil=(1, 1), gc=1, g=2,
               ho=9, wo=7, mask=True, bias=True)
    x, off, w, b, m = (torch.from_numpy(a) for a in make_tensors(rng, cfg, np.float32))
    want = dct.deform_conv2d(x, off, w, b, 1, 1, 1, m)
    # channels_last and a sliced view: numpy views of the same memory, same results.
    xl = x.to(memory_format=torch.channels_last)
    wide = torch.zeros(2, 12, 9, 7)
    wide[:, ::2] = x
    for xin in (xl, wide[:, ::2]):
        assert not xin.is_contiguous()
        assert torch.equal(dct.deform_conv2d(xin, off, w, b, 1, 1, 1, m), want)
    # bfloat16 goes in as its bits and comes back as bfloat16 (no float32 copy on the way).
    xb, ob, wb, bb, mb = (t.to(torch.bfloat16) for t in (x, off, w, b, m))
    yb = dct.deform_conv2d(xb.to(memory_format=torch.channels_last), ob, wb, bb, 1, 1, 1, mb)
    assert yb.dtype == torch.bfloat16
    ref = dct.deform_conv2d(*(t.double() for t in (xb, ob, wb, bb)), 1, 1, 1, mb.double())
    err = float((yb.double() - ref).abs().max() / ref.abs().max())
    assert err < 2.0**-7, err
    # The numpy API never takes 16-bit integers as bfloat16.
    with pytest.raises(TypeError, match="input: expected dtype"):
        dc.deform_conv2d(xb.view(torch.uint16).numpy(), off.numpy(), w.numpy())


def test_outputs_share_memory_with_what_the_engine_wrote():
    x = torch.randn(1, 4, 8, 8)
    off = torch.randn(1, 18, 8, 8)
    w = torch.randn(4, 4, 3, 3)
    y = torch.ops.deform_conv.deform_conv2d(x, off, w, None, None, [1, 1], [1, 1], [1, 1])
    assert y.is_contiguous() and y.dtype == torch.float32
    yb = torch.ops.deform_conv.deform_conv2d(x.bfloat16(), off.bfloat16(), w.bfloat16(), None, None,
                                             [1, 1], [1, 1], [1, 1])
    assert yb.dtype == torch.bfloat16 and yb.is_contiguous()
