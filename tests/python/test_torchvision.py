"""deform_conv against the live torchvision, float64 autograd, random configurations with edge offsets."""
import numpy as np
import pytest
import torch
import torchvision

import deform_conv as dc
import deform_conv.torch as dct
from conftest import make_tensors, random_config


def torchvision_all(x, off, w, b, m, cfg, gy):
    t = [None if a is None else torch.tensor(a, requires_grad=True) for a in (x, off, w, b, m)]
    y = torchvision.ops.deform_conv2d(t[0], t[1], t[2], t[3], cfg["stride"], cfg["pad"], cfg["dil"], t[4])
    y.backward(torch.tensor(gy))
    return y.detach().numpy(), [None if a is None else a.grad.numpy() for a in t]


def assert_close(name, got, want, tol=1e-9):
    assert got.shape == want.shape, name
    scale = 1.0 + np.abs(want).max(initial=0.0)
    err = np.abs(got - want).max(initial=0.0)
    assert err <= tol * scale, f"{name}: max error {err}, scale {scale}"


@pytest.mark.parametrize("backend", ["engine", "reference"])
def test_numpy_api_matches_torchvision_float64(rng, backend):
    for _ in range(25):
        cfg = random_config(rng)
        x, off, w, b, m = make_tensors(rng, cfg)
        gy = rng.standard_normal((cfg["n"], cfg["cout"], cfg["ho"], cfg["wo"]))
        y_tv, grads_tv = torchvision_all(x, off, w, b, m, cfg, gy)
        args = (x, off, w, b, cfg["stride"], cfg["pad"], cfg["dil"], m)
        assert_close("output", dc.deform_conv2d(*args, backend=backend), y_tv)
        g = dc.deform_conv2d_backward(gy, *args, backend=backend)
        for name, got, want in zip(("input", "offset", "weight", "bias", "mask"),
                                   (g.input, g.offset, g.weight, g.bias, g.mask), grads_tv):
            assert (got is None) == (want is None), name
            if want is not None:
                assert_close(f"grad {name}", got, want)


def test_torch_dropin_autograd_matches_torchvision(rng):
    for _ in range(15):
        cfg = random_config(rng)
        x, off, w, b, m = make_tensors(rng, cfg)
        gy = rng.standard_normal((cfg["n"], cfg["cout"], cfg["ho"], cfg["wo"]))
        y_tv, grads_tv = torchvision_all(x, off, w, b, m, cfg, gy)
        t = [None if a is None else torch.tensor(a, requires_grad=True) for a in (x, off, w, b, m)]
        y = dct.deform_conv2d(t[0], t[1], t[2], t[3], cfg["stride"], cfg["pad"], cfg["dil"], t[4])
        assert y.dtype == torch.float64
        y.backward(torch.tensor(gy))
        assert_close("output", y.detach().numpy(), y_tv)
        for name, a, want in zip(("input", "offset", "weight", "bias", "mask"), t, grads_tv):
            if want is not None:
                assert_close(f"grad {name}", a.grad.numpy(), want)


def test_float32_matches_torchvision(rng):
    for _ in range(10):
        cfg = random_config(rng, max_c=20, max_hw=12)
        x, off, w, b, m = make_tensors(rng, cfg, np.float32, edges=False)
        t = [None if a is None else torch.tensor(a) for a in (x, off, w, b, m)]
        want = torchvision.ops.deform_conv2d(t[0], t[1], t[2], t[3], cfg["stride"], cfg["pad"], cfg["dil"], t[4])
        got = dct.deform_conv2d(t[0], t[1], t[2], t[3], cfg["stride"], cfg["pad"], cfg["dil"], t[4])
        assert got.dtype == torch.float32
        assert_close("float32 output", got.numpy(), want.numpy(), tol=1e-5)


def test_gradcheck(rng):
    cfg = dict(n=1, c=4, h=5, w=6, cout=2, kh=3, kw=2, stride=(1, 2), pad=(1, 1), dil=(1, 1), gc=2, g=2, ho=5, wo=4,
               mask=True, bias=True)
    x, _, w, b, m = make_tensors(rng, cfg)
    # Offsets away from integer coordinates, so the function is smooth around the point.
    off = rng.integers(-2, 3, (1, 2 * 2 * 6, 5, 4)) + rng.uniform(0.2, 0.8, (1, 2 * 2 * 6, 5, 4))
    t = [torch.tensor(a, requires_grad=True) for a in (x, off, w, b, m)]
    f = lambda x_, o_, w_, b_, m_: dct.deform_conv2d(x_, o_, w_, b_, (1, 2), (1, 1), (1, 1), m_)
    assert torch.autograd.gradcheck(f, tuple(t), eps=1e-6, atol=1e-7)


def test_module_loads_torchvision_state_dict(rng):
    torch.manual_seed(int(rng.integers(0, 2**31)))
    ref = torchvision.ops.DeformConv2d(6, 8, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2).double()
    ours = dct.DeformConv2d(6, 8, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2).double()
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    ours.load_state_dict(ref.state_dict())
    x = torch.tensor(rng.standard_normal((2, 6, 9, 7)))
    ho, wo = (9 + 2 - 3) // 2 + 1, (7 + 2 - 3) // 1 + 1
    off = torch.tensor(rng.normal(0, 2, (2, 2 * 6, ho, wo)))
    mask = torch.tensor(rng.uniform(0, 1, (2, 6, ho, wo)))
    torch.testing.assert_close(ours(x, off, mask), ref(x, off, mask), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours(x, off), ref(x, off), rtol=1e-10, atol=1e-10)
    assert repr(ours).split("(", 1)[1] == repr(ref).split("(", 1)[1]


def test_torch_compile_fullgraph(rng):
    x, off, w, b, m = (torch.tensor(a) for a in make_tensors(rng, dict(
        n=2, c=4, h=6, w=6, cout=3, kh=3, kw=3, stride=(1, 1), pad=(1, 1), dil=(1, 1), gc=1, g=1, ho=6, wo=6,
        mask=True, bias=True), np.float32))

    def f(x, off, w, b, m):
        return dct.deform_conv2d(x, off, w, b, padding=1, mask=m).relu().sum()

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, off, w, b, m), f(x, off, w, b, m))
    w_ = w.clone().requires_grad_(True)
    compiled(x, off, w_, b, m).backward()
    assert w_.grad is not None and torch.isfinite(w_.grad).all()


def test_opcheck(rng):
    x, off, w, b, m = (torch.tensor(a) for a in make_tensors(rng, dict(
        n=1, c=2, h=4, w=5, cout=2, kh=2, kw=2, stride=(1, 1), pad=(0, 0), dil=(1, 1), gc=1, g=1, ho=3, wo=4,
        mask=True, bias=True)))
    torch.library.opcheck(torch.ops.deform_conv.deform_conv2d.default,
                          (x, off, w, b, m, [1, 1], [0, 0], [1, 1]),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_thread_count_does_not_change_bits(rng):
    cfg = random_config(rng, max_c=16, max_hw=24)
    x, off, w, b, m = make_tensors(rng, cfg, np.float32)
    args = (x, off, w, b, cfg["stride"], cfg["pad"], cfg["dil"], m)
    gy = rng.standard_normal((cfg["n"], cfg["cout"], cfg["ho"], cfg["wo"])).astype(np.float32)
    results = []
    for n in (1, 2, 3):
        dc.set_num_threads(n)
        g = dc.deform_conv2d_backward(gy, *args)
        results.append([dc.deform_conv2d(*args), g.input, g.offset, g.weight])
    dc.set_num_threads(0)
    for r in results[1:]:
        for a, b_ in zip(results[0], r):
            assert np.array_equal(a, b_, equal_nan=True)


def test_any_strides_and_order(rng):
    """Negative strides, Fortran order and sliced views give the same bits as contiguous copies."""
    cfg = random_config(rng, max_c=8, max_hw=10)
    x, off, w, b, m = make_tensors(rng, cfg)
    args = (cfg["stride"], cfg["pad"], cfg["dil"])
    want = dc.deform_conv2d(x, off, w, b, *args, m)
    flipped = np.ascontiguousarray(x[:, :, ::-1])[:, :, ::-1]  # same values, negative row stride
    assert np.array_equal(dc.deform_conv2d(flipped, off, w, b, *args, m), want)
    assert np.array_equal(dc.deform_conv2d(np.asfortranarray(x), np.asfortranarray(off), np.asfortranarray(w), b,
                                           *args, None if m is None else np.asfortranarray(m)), want)
    wide = np.zeros(x.shape[:3] + (2 * x.shape[3],))
    wide[..., ::2] = x
    assert np.array_equal(dc.deform_conv2d(wide[..., ::2], off, w, b, *args, m), want)


def test_the_eager_path_is_the_custom_op_bit_for_bit_and_modes_see_the_op(rng):
    """Plain eager calls skip the dispatcher (``_runtime._plain``): output and every gradient must
    be the custom op's bits, with and without bias and mask; the profiler, a dispatch mode and a
    scripted caller still see ``deform_conv::deform_conv2d``."""
    from conftest import ops_seen

    for _ in range(6):
        cfg = random_config(rng)
        arrays = make_tensors(rng, cfg)
        t = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
        x, off, w, b, m = t
        conv = ([*cfg["stride"]], [*cfg["pad"]], [*cfg["dil"]])
        y = dct.deform_conv2d(x, off, w, b, tuple(conv[0]), tuple(conv[1]), tuple(conv[2]), m)
        y_op = torch.ops.deform_conv.deform_conv2d(x, off, w, b, m, *conv, False)
        assert torch.equal(y, y_op)
        gy = torch.randn_like(y)
        live = [a for a in t if a is not None]
        for a, c in zip(torch.autograd.grad(y, live, gy), torch.autograd.grad(y_op, live, gy)):
            assert torch.equal(a, c)

    x, off, w = (torch.randn(1, 2, 5, 5), torch.randn(1, 18, 5, 5), torch.randn(3, 2, 3, 3))
    seen = ops_seen(lambda: dct.deform_conv2d(x, off, w, padding=(1, 1)))
    assert any("deform_conv.deform_conv2d" in op for op in seen), seen
    with torch.profiler.profile() as prof:
        dct.deform_conv2d(x, off, w.requires_grad_(), padding=(1, 1)).sum().backward()
    names = {e.name for e in prof.events()}
    assert {"deform_conv::deform_conv2d", "deform_conv::deform_conv2d_backward"} <= names, names
    scripted = torch.jit.script(dct.DeformConv2d(2, 3, 3, padding=1))
    assert "deform_conv::deform_conv2d" in str(scripted.inlined_graph)
