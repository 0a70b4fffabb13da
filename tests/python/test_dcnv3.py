"""DCNv3 / DCNv4 against InternImage's grid_sample formulation (float64, autograd), written here
from its definition: pad, reference points at pixel centres, the kernel grid around them scaled by
offset_scale, offsets added in pixels, normalised to [-1, 1], ``grid_sample(align_corners=False,
padding_mode='zeros')``, times the mask, summed over the points."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deform_conv as dc
import deform_conv.torch as dct
from grid_sample_dcnv3 import grid_sample_dcnv3

rng = np.random.default_rng()


def problem(kh=3, kw=3, group=2, gc=5, n=2, h=7, w=6, stride=(1, 1), pad=1, dil=(1, 1), remove_center=False,
            dtype=torch.float64):
    pts = kh * kw - int(remove_center)
    ho = (h + 2 * pad - (dil[0] * (kh - 1) + 1)) // stride[0] + 1
    wo = (w + 2 * pad - (dil[1] * (kw - 1) + 1)) // stride[1] + 1
    t = lambda *s, scale=1.0: torch.tensor(rng.standard_normal(s) * scale, dtype=dtype, requires_grad=True)
    return (t(n, h, w, group * gc), t(n, ho, wo, group * pts * 2, scale=2.0), t(n, ho, wo, group * pts),
            t(n, ho, wo, group * gc))


@pytest.mark.parametrize("cfg", [
    dict(), dict(remove_center=True), dict(kh=1, kw=1, pad=0), dict(stride=(2, 1), dil=(2, 1), pad=2),
    dict(kh=5, kw=3, group=1, gc=16, pad=2), dict(group=4, gc=3, scale=0.5), dict(h=1, w=1, pad=1),
    dict(gc=17, scale=2.0, stride=(2, 2)),
])
def test_matches_internimages_formulation_forward_and_backward(cfg):
    cfg = dict(cfg)
    scale = cfg.pop("scale", 1.0)
    x, off, m, gy = problem(**cfg)
    kh, kw = cfg.get("kh", 3), cfg.get("kw", 3)
    (sh, sw), (dh, dw), pad = cfg.get("stride", (1, 1)), cfg.get("dil", (1, 1)), cfg.get("pad", 1)
    g, gc, rc = cfg.get("group", 2), cfg.get("gc", 5), cfg.get("remove_center", False)
    want = grid_sample_dcnv3(x, off, m, kh, kw, sh, sw, pad, dh, dw, g, gc, scale, rc)
    got = dct.dcnv3_core_pytorch(x, off, m, kh, kw, sh, sw, pad, pad, dh, dw, g, gc, scale, int(rc))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    gw = torch.autograd.grad((want * gy).sum(), (x, off, m))
    gg = torch.autograd.grad((got * gy).sum(), (x, off, m))
    for name, a, b in zip(("input", "offset", "mask"), gg, gw):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8, msg=name)
    # numpy API, float32: the same numbers within float32's rounding.
    y32 = dc.dcnv3(x.detach().float().numpy(), off.detach().float().numpy(), m.detach().float().numpy(),
                   (kh, kw), (sh, sw), pad, (dh, dw), g, gc, scale, rc)
    np.testing.assert_allclose(y32, want.detach().numpy(), rtol=1e-4, atol=1e-4)


def test_gradcheck_and_dcnv4_packing():
    x, off, m, _ = problem(n=1, h=4, w=5, group=2, gc=2)
    args = (3, 3, 1, 1, 1, 1, 1, 1, 2, 2, 1.0)
    assert torch.autograd.gradcheck(lambda a, b, c: dct.dcnv3_core_pytorch(a, b, c, *args), (x, off, m))
    # DCNv4: per group 9 (x, y) pairs then 9 masks, padded to a multiple of 8 (54 -> 56).
    om = torch.full((1, 4, 5, 56), float("nan"), dtype=torch.float64)
    for gi in range(2):
        om[..., gi * 27: gi * 27 + 18] = off[..., gi * 18:(gi + 1) * 18].detach()
        om[..., gi * 27 + 18:(gi + 1) * 27] = m[..., gi * 9:(gi + 1) * 9].detach()
    om.requires_grad_()
    y4 = dct.dcnv4_function(x, om, *args[:-1], args[-1], 256, 0)
    y3 = dct.dcnv3_function(x, off, m, *args, 256, 0)
    assert torch.equal(y3, y4)
    y4.sum().backward()
    assert torch.all(om.grad[..., 54:] == 0)
    assert torch.equal(dct.dcnv4(x, om, *args), y4)
    assert torch.equal(dct.dcnv3_core(x, off, m, *args, 0), y3)
    y4n = dc.dcnv4(x.detach().numpy(), om.detach().numpy(), 3, 1, 1, 1, 2, 2)
    np.testing.assert_array_equal(y4n, y4.detach().numpy())


def test_torch_compile_and_half_precision():
    x, off, m, _ = problem(dtype=torch.float32)
    f = torch.compile(lambda a, b, c: dct.dcnv3_core_pytorch(a, b, c, 3, 3, 1, 1, 1, 1, 1, 1, 2, 5, 1.0), fullgraph=True)
    torch.testing.assert_close(f(x, off, m), dct.dcnv3_core_pytorch(x, off, m, 3, 3, 1, 1, 1, 1, 1, 1, 2, 5, 1.0))
    for dt, tol in ((torch.float16, 5e-3), (torch.bfloat16, 3e-2)):
        y = dct.dcnv3_core_pytorch(x.to(dt), off.to(dt), m.to(dt), 3, 3, 1, 1, 1, 1, 1, 1, 2, 5, 1.0)
        want = dct.dcnv3_core_pytorch(*(t.to(dt).double() for t in (x, off, m)), 3, 3, 1, 1, 1, 1, 1, 1, 2, 5, 1.0)
        assert y.dtype == dt
        torch.testing.assert_close(y.double(), want, rtol=tol, atol=tol * want.abs().max().item())


@pytest.mark.parametrize("call, exc, words", [
    (lambda x, o, m: dc.dcnv3(x, o, m, 3, 1, 1, 1, 3, 5), ValueError, r"group \* group_channels"),
    (lambda x, o, m: dc.dcnv3(x, o, m, 2, 1, 1, 1, 2, 5, remove_center=True), ValueError, "remove_center"),
    (lambda x, o, m: dc.dcnv3(x, o[..., :-1], m, 3, 1, 1, 1, 2, 5), ValueError, "offset"),
    (lambda x, o, m: dc.dcnv3(x, o, m, 3, 0, 1, 1, 2, 5), ValueError, "stride_h"),
    (lambda x, o, m: dc.dcnv3(x, o, m, 3, 1, 1, 1, 2.0, 5), TypeError, "group"),
    (lambda x, o, m: dc.dcnv3(x, o, None, 3, 1, 1, 1, 2, 5), TypeError, "mask"),
    (lambda x, o, m: dc.dcnv3(x, o, m, 3, 1, 1, 1, 2, 5, offset_scale="1"), TypeError, "offset_scale"),
    (lambda x, o, m: dc.dcnv4(x, m, 3, 1, 1, 1, 2, 5), ValueError, "offset_mask"),
])
def test_bad_arguments_are_named_errors(call, exc, words):
    x, o, m, _ = problem()
    with pytest.raises(exc, match=words):
        call(x.detach().numpy(), o.detach().numpy(), m.detach().numpy())


def test_outputs_stay_theirs_while_alive_and_memory_comes_back_after():
    """Outputs' memory goes back to the engine when numpy releases it: an output (or a torch view
    of it) still alive keeps its values through later calls; a released one's memory serves the
    next output (1 MB and up), which holds its own values, not the stale ones."""
    x = torch.randn(1, 64, 80, 64)
    off, m = 2 * torch.randn(1, 64, 80, 4 * 18), torch.rand(1, 64, 80, 4 * 9)
    f = lambda x: dct.dcnv3_core_pytorch(x, off, m, 3, 3, 1, 1, 1, 1, 1, 1, 4, 16, 1.0)
    y1 = f(x)
    view = y1[0, 5:9, :, 3:40]
    kept = view.clone()
    ptr = y1.data_ptr()
    del y1
    y2 = f(2 * x)  # y1's memory is still held by `view`: not reused
    assert y2.data_ptr() != ptr and torch.equal(view, kept)
    ptr2 = y2.data_ptr()
    del y2
    y3 = f(3 * x)
    assert y3.data_ptr() == ptr2, "a released output's memory serves the next one"
    assert torch.allclose(y3, 3 * f(x), rtol=1e-5, atol=1e-5) and torch.equal(view, kept)


def test_the_eager_path_is_the_custom_op_bit_for_bit_and_modes_see_the_op():
    """Plain eager calls skip the dispatcher (``_runtime._plain``); the result and every
    gradient must be the custom op's bits, DCNv3 and DCNv4, and a dispatch mode, the profiler
    and TorchScript-visible ``torch.ops`` still see ``deform_conv::dcnv3``."""
    from conftest import ops_seen

    x, off, m, gy = problem(group=2, gc=5)
    args = (3, 3, 1, 1, 1, 1, 1, 1, 2, 5, 0.5)
    y = dct.dcnv3_core_pytorch(x, off, m, *args)
    y_op = torch.ops.deform_conv.dcnv3(x, off, m, [3, 3, 1, 1, 1, 1, 1, 1, 2, 5], 0.5, False)
    assert torch.equal(y, y_op)
    for a, b in zip(torch.autograd.grad(y, (x, off, m), gy), torch.autograd.grad(y_op, (x, off, m), gy)):
        assert torch.equal(a, b)
    om = torch.cat([off.detach().reshape(2, 7, 6, 2, 18), m.detach().reshape(2, 7, 6, 2, 9)], -1)
    om = om.reshape(2, 7, 6, 54).requires_grad_()
    y4 = dct.dcnv4(x, om, 3, 3, 1, 1, 1, 1, 1, 1, 2, 5, 0.5)
    y4_op = torch.ops.deform_conv.dcnv3(x, om, None, [3, 3, 1, 1, 1, 1, 1, 1, 2, 5], 0.5, False)
    assert torch.equal(y4, y4_op)
    for a, b in zip(torch.autograd.grad(y4, (x, om), gy), torch.autograd.grad(y4_op, (x, om), gy)):
        assert torch.equal(a, b)

    seen = ops_seen(lambda: dct.dcnv3_core_pytorch(x.detach(), off.detach(), m.detach(), *args))
    assert any("deform_conv.dcnv3" in op for op in seen), seen
    with torch.profiler.profile() as prof:
        dct.dcnv3_core_pytorch(x, off, m, *args).sum().backward()
    names = {e.name for e in prof.events()}
    assert "deform_conv::dcnv3" in names and "deform_conv::dcnv3_backward" in names, names
