"""Multi-scale deformable attention against Deformable DETR's grid_sample formulation
(``ms_deform_attn_core_pytorch``, written here from its definition) in float64 with autograd."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deform_conv as dc
import deform_conv.torch as dct

rng = np.random.default_rng()


def grid_sample_msda(value, shapes, loc, attn):
    """Per level: value [N*M, D, H, W], grid 2*loc - 1, grid_sample(bilinear, zeros,
    align_corners=False), times the weights, summed over levels and points."""
    n, _, m, d = value.shape
    _, q, _, levels, p, _ = loc.shape
    parts = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * loc - 1
    sampled = []
    for lid, (h, w) in enumerate(shapes):
        v = parts[lid].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        g = grids[:, :, :, lid].transpose(1, 2).flatten(0, 1)  # [N*M, Lq, P, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    a = attn.transpose(1, 2).reshape(n * m, 1, q, levels * p)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * a).sum(-1).view(n, m * d, q)
    return out.transpose(1, 2).contiguous()


def problem(shapes=((6, 5), (3, 3), (1, 2)), n=2, q=70, m=3, d=5, p=4, edges=False, dtype=torch.float64):
    s = sum(h * w for h, w in shapes)
    t = lambda *sh, lo=-1.0, hi=1.0: torch.tensor(rng.uniform(lo, hi, sh), dtype=dtype)
    value, attn = t(n, s, m, d), t(n, q, m, len(shapes), p)
    loc = t(n, q, m, len(shapes), p, 2, lo=-0.2, hi=1.2)
    if edges:
        pick = torch.tensor(rng.integers(0, 6, loc.shape))
        loc = torch.where(pick == 0, torch.zeros_like(loc), torch.where(pick == 1, torch.ones_like(loc), loc))
    for x in (value, loc, attn):
        x.requires_grad_()
    return value, loc, attn


@pytest.mark.parametrize("cfg", [dict(), dict(shapes=((8, 8),), p=1, m=1, d=1), dict(edges=True),
                                 dict(shapes=((4, 7), (2, 4), (1, 1), (1, 1)), q=3, d=32)])
def test_matches_deformable_detrs_formulation(cfg):
    shapes = cfg.get("shapes", ((6, 5), (3, 3), (1, 2)))
    value, loc, attn = problem(**cfg)
    want = grid_sample_msda(value, shapes, loc, attn)
    starts = np.cumsum([0] + [h * w for h, w in shapes])[:-1]
    got = dct.ms_deform_attn(value, torch.tensor(shapes), torch.tensor(starts), loc, attn, 64)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    gy = torch.randn_like(want)
    gw = torch.autograd.grad((want * gy).sum(), (value, loc, attn))
    gg = torch.autograd.grad((got * gy).sum(), (value, loc, attn))
    for name, a, b in zip(("value", "sampling_locations", "attention_weights"), gg, gw):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8, msg=name)
    mm = dct.multi_scale_deformable_attn_pytorch(value, shapes, loc, attn)
    assert torch.equal(mm, got)
    y32 = dc.ms_deform_attn(value.detach().float().numpy(), shapes, starts, loc.detach().float().numpy(),
                            attn.detach().float().numpy())
    np.testing.assert_allclose(y32, want.detach().numpy(), rtol=1e-4, atol=1e-4)


def test_gradcheck_compile_and_half():
    shapes = ((3, 4), (2, 2))
    value, loc, attn = problem(shapes=shapes, n=1, q=5, m=2, d=3, p=2)
    f = lambda v, l, a: dct.ms_deform_attn(v, shapes, [0, 12], l, a)
    assert torch.autograd.gradcheck(f, (value, loc, attn))
    v32, l32, a32 = (t.detach().float() for t in (value, loc, attn))
    g = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(g(v32, l32, a32), f(v32, l32, a32))
    for dt, tol in ((torch.float16, 5e-3), (torch.bfloat16, 3e-2)):
        y = f(v32.to(dt), l32.to(dt), a32.to(dt))
        want = f(*(t.to(dt).double() for t in (v32, l32, a32)))
        assert y.dtype == dt
        torch.testing.assert_close(y.double(), want, rtol=tol, atol=tol * want.abs().max().item())


def test_levels_are_checked():
    value, loc, attn = problem()
    shapes = torch.tensor([[6, 5], [3, 3], [1, 2]])
    for starts, words in (([0, 30, 38], r"level_start_index\[2\]"), ([0, 30], "level_start_index")):
        with pytest.raises(ValueError, match=words):
            dct.ms_deform_attn(value, shapes, torch.tensor(starts), loc, attn)
    with pytest.raises(ValueError, match="value"):
        dct.ms_deform_attn(value, torch.tensor([[6, 5], [3, 3], [2, 2]]), None, loc, attn)
    with pytest.raises(ValueError, match="spatial_shapes"):
        dc.ms_deform_attn(value.detach().numpy(), np.array([[6.0, 5.0]]), None, loc.detach().numpy(),
                          attn.detach().numpy())


def test_the_eager_path_is_the_custom_op_bit_for_bit_and_the_profiler_sees_the_op():
    """Plain eager calls skip the dispatcher (``_runtime._plain``): the result and every gradient
    must be the custom op's bits, and the profiler still sees ``deform_conv::ms_deform_attn``."""
    shapes = ((6, 5), (3, 3), (1, 2))
    value, loc, attn = problem(shapes)[:3]
    flat = [v for hw in shapes for v in hw]
    starts = [0, 30, 39]
    y = dct.ms_deform_attn(value, torch.tensor(shapes), torch.tensor(starts), loc, attn)
    y_op = torch.ops.deform_conv.ms_deform_attn(value, flat, starts, loc, attn)
    assert torch.equal(y, y_op)
    gy = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, (value, loc, attn), gy),
                    torch.autograd.grad(y_op, (value, loc, attn), gy)):
        assert torch.equal(a, b)
    with torch.profiler.profile() as prof:
        dct.ms_deform_attn(value, torch.tensor(shapes), torch.tensor(starts), loc, attn).sum().backward()
    names = {e.name for e in prof.events()}
    assert "deform_conv::ms_deform_attn" in names and "deform_conv::ms_deform_attn_backward" in names, names
