"""MindSpore / torch_npu (both layouts) against torchvision after layout conversion; ONNX against onnxruntime;
MindSpore itself when it is installed."""

import numpy as np
import pytest
import torch
import torchvision

import deform_conv as dc
import deform_conv.torch as dct
from conftest import make_tensors, random_config, out_size


def floor_ok(cfg):
    """The configuration is valid under floor rounding too (MindSpore, torch_npu, ONNX)."""
    num_h = cfg["h"] + 2 * cfg["pad"][0] - (cfg["dil"][0] * (cfg["kh"] - 1) + 1)
    num_w = cfg["w"] + 2 * cfg["pad"][1] - (cfg["dil"][1] * (cfg["kw"] - 1) + 1)
    return num_h >= 0 and num_w >= 0


def packed_args(cfg):
    (sh, sw), (ph, pw), (dh, dw) = cfg["stride"], cfg["pad"], cfg["dil"]
    return dict(kernel_size=(cfg["kh"], cfg["kw"]), strides=(1, 1, sh, sw), padding=(ph, ph, pw, pw),
                dilations=(1, 1, dh, dw), groups=cfg["gc"], deformable_groups=cfg["g"])


def tv(x, off, w, b, m, cfg, gy=None):
    t = [None if a is None else torch.tensor(a, requires_grad=True) for a in (x, off, w, b, m)]
    y = torchvision.ops.deform_conv2d(t[0], t[1], t[2], t[3], cfg["stride"], cfg["pad"], cfg["dil"], t[4])
    if gy is None:
        return y.detach().numpy()
    y.backward(torch.tensor(gy))
    return y.detach().numpy(), [None if a is None else a.grad.numpy() for a in t]


def close(got, want, tol=1e-9):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * (1 + np.abs(want).max(initial=0)))


def configs(rng, count):
    out = []
    while len(out) < count:
        cfg = random_config(rng)
        if floor_ok(cfg):
            cfg["mask"] = True
            out.append(cfg)
    return out


def test_mindspore_matches_torchvision(rng):
    for cfg in configs(rng, 15):
        x, off, w, b, m = make_tensors(rng, cfg)
        gy = rng.standard_normal((cfg["n"], cfg["cout"], cfg["ho"], cfg["wo"]))
        y_tv, (gx, goff, gw, gb, gm) = tv(x, off, w, b, m, cfg, gy)
        packed = dc.interleaved_to_packed(off, m)
        a = packed_args(cfg)
        close(dc.mindspore.deformable_conv2d(x, w, packed, bias=b, **a), y_tv)
        g_x, g_w, g_packed, g_b = dc.mindspore.deformable_conv2d_backward(gy, x, w, packed, bias=b, **a)
        g_off, g_m = dc.packed_to_interleaved(g_packed)
        close(g_x, gx), close(g_w, gw), close(g_off, goff), close(g_m, gm)
        close(g_b, gy.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_npu_matches_torchvision_with_its_gate(rng, layout):
    for cfg in configs(rng, 12):
        x, off, w, b, m = make_tensors(rng, cfg)
        gy = rng.standard_normal((cfg["n"], cfg["cout"], cfg["ho"], cfg["wo"]))
        y_tv, (gx, goff, gw, gb, gm) = tv(x, off, w, b, m, cfg, gy)
        packed = dc.interleaved_to_packed(off, m)
        a = packed_args(cfg)
        a = dict(kernel_size=a["kernel_size"], stride=a["strides"], padding=a["padding"], dilation=a["dilations"],
                 groups=a["groups"], deformable_groups=a["deformable_groups"])
        nhwc = layout == "NHWC"
        to = dc.nchw_to_nhwc if nhwc else (lambda v: v)
        back = dc.nhwc_to_nchw if nhwc else (lambda v: v)
        wl = dc.oihw_to_hwcn(w) if nhwc else w
        y, d = dc.npu.npu_deformable_conv2d(to(x), wl, to(packed), b, layout=layout, **a)
        y, d = back(y), back(d)
        close(y, y_tv)
        # The deformed image: a plain conv with stride = kernel gives the output.
        y_from_d = torch.nn.functional.conv2d(torch.tensor(d), torch.tensor(w), None if b is None else torch.tensor(b),
                                              stride=(cfg["kh"], cfg["kw"]), groups=cfg["gc"])
        close(y_from_d.numpy(), y_tv)
        g_x, g_w, g_packed, g_b = dc.npu.npu_deformable_conv2dbk(to(x), to(gy), to(d), wl, to(packed), layout=layout,
                                                                 **a)
        g_off, g_m = dc.packed_to_interleaved(back(g_packed))
        # torch_npu's gate: zero offset gradient wherever the sample is not strictly inside.
        n, k = cfg["n"], cfg["kh"] * cfg["kw"]
        ii, jj = np.divmod(np.arange(k), cfg["kw"])
        py = (np.arange(cfg["ho"])[None, :, None] * cfg["stride"][0] - cfg["pad"][0] + (ii * cfg["dil"][0])[:, None, None]
              + off[:, 0::2].reshape(n, cfg["g"], k, cfg["ho"], cfg["wo"]))
        px = (np.arange(cfg["wo"])[None, None, :] * cfg["stride"][1] - cfg["pad"][1] + (jj * cfg["dil"][1])[:, None, None]
              + off[:, 1::2].reshape(n, cfg["g"], k, cfg["ho"], cfg["wo"]))
        inside = ((py > -1) & (py < cfg["h"]) & (px > -1) & (px < cfg["w"])).reshape(n, -1, cfg["ho"], cfg["wo"])
        close(g_off, np.where(np.repeat(inside, 2, axis=1), goff, 0.0))
        close(g_m, gm), close(back(g_x), gx)
        close(dc.hwcn_to_oihw(g_w) if nhwc else g_w, gw)
        close(g_b, gy.sum(axis=(0, 2, 3)))


def test_npu_torch_dropin_autograd(rng):
    cfg = configs(rng, 1)[0]
    x, off, w, b, m = make_tensors(rng, cfg, edges=False)
    a = packed_args(cfg)
    packed = torch.tensor(dc.interleaved_to_packed(off, m), requires_grad=True)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True) if b is not None else None
    y, d = dct.npu_deformable_conv2d(tx, tw, packed, tb, a["kernel_size"], a["strides"], a["padding"], a["dilations"],
                                     a["groups"], a["deformable_groups"])
    assert d.shape == (cfg["n"], cfg["c"], cfg["ho"] * cfg["kh"], cfg["wo"] * cfg["kw"])
    gy = torch.tensor(rng.standard_normal(tuple(y.shape)))
    y.backward(gy)
    y_tv, (gx, goff, gw, gb, gm) = tv(x, off, w, b, m, cfg, gy.numpy())
    close(y.detach().numpy(), y_tv)
    close(tx.grad.numpy(), gx), close(tw.grad.numpy(), gw)
    g_off, g_m = dc.packed_to_interleaved(packed.grad.numpy())
    close(g_m, gm)


def test_onnx_matches_onnxruntime(rng):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    for cfg in configs(rng, 8):
        x, off, w, b, m = make_tensors(rng, cfg, np.float32, edges=False)
        if b is None:
            b = np.zeros(cfg["cout"], np.float32)
        (sh, sw), (ph, pw), (dh, dw) = cfg["stride"], cfg["pad"], cfg["dil"]
        attrs = dict(dilations=[dh, dw], group=cfg["gc"], kernel_shape=[cfg["kh"], cfg["kw"]],
                     offset_group=cfg["g"], pads=[ph, pw, ph, pw], strides=[sh, sw])
        node = helper.make_node("DeformConv", ["X", "W", "offset", "B", "mask"], ["Y"], **attrs)
        inputs = [helper.make_tensor_value_info(n_, TensorProto.FLOAT, list(a_.shape))
                  for n_, a_ in (("X", x), ("W", w), ("offset", off), ("B", b), ("mask", m))]
        graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        want = sess.run(None, dict(X=x, W=w, offset=off, B=b, mask=m))[0]
        got = dc.onnx.deform_conv(x, w, off, b, m, **attrs)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))


# The live MindSpore comparisons run in tests/mindspore (their own venv: MindSpore wants numpy < 2).


def test_npu_eager_path_is_the_custom_op_bit_for_bit(rng):
    """Plain eager calls skip the dispatcher (``_runtime._plain``): both outputs and every
    gradient must be the custom op's bits; the profiler still sees the op."""
    for cfg in configs(rng, 4):
        x, off, w, b, m = make_tensors(rng, cfg, edges=False)
        a = packed_args(cfg)
        packed = torch.tensor(dc.interleaved_to_packed(off, m), requires_grad=True)
        tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
        tb = torch.tensor(b, requires_grad=True) if b is not None else None
        attrs = (list(a["kernel_size"]), list(a["strides"]), list(a["padding"]), list(a["dilations"]), a["groups"],
                 a["deformable_groups"], True)
        y, d = dct.npu_deformable_conv2d(tx, tw, packed, tb, *attrs)
        y_op, d_op = torch.ops.deform_conv.npu_deformable_conv2d(tx, tw, packed, tb, *attrs)
        assert torch.equal(y, y_op) and torch.equal(d, d_op)
        gy = torch.randn_like(y)
        live = [t for t in (tx, tw, packed, tb) if t is not None]
        for g1, g2 in zip(torch.autograd.grad(y, live, gy), torch.autograd.grad(y_op, live, gy)):
            assert torch.equal(g1, g2)
    with torch.profiler.profile() as prof:
        dct.npu_deformable_conv2d(tx, tw, packed, tb, *attrs)[0].sum().backward()
    names = {e.name for e in prof.events()}
    assert {"deform_conv::npu_deformable_conv2d", "deform_conv::npu_deformable_conv2dbk"} <= names, names
