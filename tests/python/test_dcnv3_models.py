"""DCNv3 and DCNv4 where their users meet them: InternImage's ``DCNv3`` and DCNv4's ``DCNv4`` modules
(checkpoint keys, initialisation, forward against the grid_sample formulation), and unmodified
code that imports their compiled extensions, after ``deform_conv.torch.install()``."""
import importlib
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deform_conv.torch as dct
from grid_sample_dcnv3 import grid_sample_dcnv3

rng = np.random.default_rng()


def randomise(module):
    torch.manual_seed(int(rng.integers(1 << 30)))
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return module


@pytest.mark.parametrize("kw", [dict(), dict(remove_center=True, kernel_size=5, pad=2),
                                dict(center_feature_scale=True, group=2, dilation=2, pad=2),
                                dict(norm_layer="BN", act_layer="ReLU", dw_kernel_size=5)])
def test_internimage_dcnv3_module(kw):
    layer = dct.DCNv3(channels=12, **{"group": 3, **kw})
    keys = {"dw_conv.0.weight", "dw_conv.0.bias", "offset.weight", "offset.bias", "mask.weight", "mask.bias",
            "input_proj.weight", "input_proj.bias", "output_proj.weight", "output_proj.bias"}
    keys |= ({"dw_conv.1.0.weight", "dw_conv.1.0.bias", "dw_conv.1.0.running_mean", "dw_conv.1.0.running_var",
              "dw_conv.1.0.num_batches_tracked"} if kw.get("norm_layer") == "BN"
             else {"dw_conv.1.1.weight", "dw_conv.1.1.bias"})
    if kw.get("center_feature_scale"):
        keys |= {"center_feature_scale_proj_weight", "center_feature_scale_proj_bias"}
    assert set(layer.state_dict()) == keys
    assert torch.count_nonzero(layer.offset.weight) == 0 and torch.count_nonzero(layer.mask.bias) == 0
    layer = randomise(layer).double().eval()
    x = torch.randn(2, 7, 9, 12, dtype=torch.float64)
    got = layer(x)
    # InternImage's forward, written from its definition, with the grid_sample core.
    n, h, w, _ = x.shape
    xp = layer.input_proj(x)
    x1 = layer.dw_conv(x.permute(0, 3, 1, 2))
    offset = layer.offset(x1)
    mask = F.softmax(layer.mask(x1).reshape(n, h, w, layer.group, -1), -1).reshape(n, h, w, -1)
    k = layer.kernel_size
    y = grid_sample_dcnv3(xp, offset, mask, k, k, layer.stride, layer.stride, layer.pad, layer.dilation,
                          layer.dilation, layer.group, layer.group_channels, layer.offset_scale, layer.remove_center)
    if layer.center_feature_scale:
        s = F.linear(x1, layer.center_feature_scale_proj_weight, layer.center_feature_scale_proj_bias).sigmoid()
        s = s[..., None].repeat(1, 1, 1, 1, layer.group_channels).flatten(-2)
        y = y * (1 - s) + xp * s
    torch.testing.assert_close(got, layer.output_proj(y), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kw", [dict(), dict(dw_kernel_size=3, output_bias=False), dict(without_pointwise=True)])
def test_dcnv4_module(kw):
    layer = dct.DCNv4(channels=32, group=2, **kw)
    keys = {"offset_mask.weight", "offset_mask.bias"}
    if not kw.get("without_pointwise"):
        keys |= {"value_proj.weight", "value_proj.bias", "output_proj.weight"}
        keys |= set() if kw.get("output_bias") is False else {"output_proj.bias"}
    if kw.get("dw_kernel_size"):
        keys |= {"offset_mask_dw.weight", "offset_mask_dw.bias"}
    assert set(layer.state_dict()) == keys
    assert layer.offset_mask.out_features == 56  # ceil(2 groups * 9 points * 3 / 8) * 8
    layer = randomise(layer).double()
    h, w = 5, 6
    x = torch.randn(2, h * w, 32, dtype=torch.float64)
    got = layer(x, shape=(h, w))
    v = (layer.value_proj(x) if not layer.without_pointwise else x).reshape(2, h, w, -1)
    om_in = x
    if layer.dw_kernel_size is not None:
        om_in = layer.offset_mask_dw(x.view(2, h, w, 32).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(2, h * w, 32)
    om = layer.offset_mask(om_in).reshape(2, h, w, -1)
    per = om[..., :2 * 27].reshape(2, h, w, 2, 27)  # per group: 9 (x, y) pairs then 9 masks
    offset = per[..., :18].reshape(2, h, w, 36)
    mask = per[..., 18:].reshape(2, h, w, 18)
    y = grid_sample_dcnv3(v, offset, mask, 3, 3, 1, 1, 1, 1, 1, 2, 16, 1.0, False).reshape(2, h * w, -1)
    if not layer.without_pointwise:
        y = layer.output_proj(y)
    torch.testing.assert_close(got, y, rtol=1e-10, atol=1e-10)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def upstream_code(tmp_path, monkeypatch):
    """Code as InternImage and DCNv4 ship it: a Function over `import DCNv3`, a package whose
    functions do `from DCNv4 import ext` (written here from their definitions)."""
    write(tmp_path / "internimage_ops.py", """
        import torch
        import DCNv3

        class DCNv3Function(torch.autograd.Function):
            @staticmethod
            def forward(ctx, input, offset, mask, kh, kw, sh, sw, ph, pw, dh, dw, g, gc, scale, step, rc):
                ctx.a = (kh, kw, sh, sw, ph, pw, dh, dw, g, gc, scale)
                ctx.step, ctx.rc = step, rc
                ctx.save_for_backward(input, offset, mask)
                return DCNv3.dcnv3_forward(input, offset, mask, *ctx.a, step, rc)

            @staticmethod
            def backward(ctx, grad):
                input, offset, mask = ctx.saved_tensors
                gi, go, gm = DCNv3.dcnv3_backward(input, offset, mask, *ctx.a, grad.contiguous(), ctx.step, ctx.rc)
                return (gi, go, gm) + (None,) * 13
    """)
    write(tmp_path / "DCNv4" / "__init__.py", "from .functions import DCNv4Function\n")
    write(tmp_path / "DCNv4" / "functions.py", """
        import torch
        from DCNv4 import ext

        class DCNv4Function(torch.autograd.Function):
            @staticmethod
            def forward(ctx, input, om, kh, kw, sh, sw, ph, pw, dh, dw, g, gc, scale, step, rc):
                ctx.a = (kh, kw, sh, sw, ph, pw, dh, dw, g, gc, scale, step)
                ctx.rc = rc
                ctx.save_for_backward(input, om)
                return ext.dcnv4_forward(input, om, *ctx.a, rc, 8, 128, False)

            @staticmethod
            def backward(ctx, grad):
                input, om = ctx.saved_tensors
                gi, gom = ext.dcnv4_backward(input, om, *ctx.a, grad.contiguous(), ctx.rc, 2, 128, False)
                return (gi, gom) + (None,) * 13
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("internimage_ops", "DCNv4", "DCNv4.functions", "DCNv4.ext", "DCNv3"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield
    dct.uninstall()
    for name in ("internimage_ops", "DCNv4", "DCNv4.functions"):
        sys.modules.pop(name, None)


def test_install_serves_the_extensions_unmodified_code_imports(upstream_code):
    dct.uninstall()
    with pytest.raises(ImportError):
        importlib.import_module("internimage_ops")
    with pytest.raises(ImportError):
        importlib.import_module("DCNv4")
    dct.install()
    ops = importlib.import_module("internimage_ops")
    v4 = importlib.import_module("DCNv4")
    g, gc, p = 2, 3, 9
    x = torch.randn(2, 6, 7, g * gc, dtype=torch.float64, requires_grad=True)
    off = (torch.randn(2, 6, 7, g * p * 2, dtype=torch.float64) * 2).requires_grad_()
    mask = torch.rand(2, 6, 7, g * p, dtype=torch.float64, requires_grad=True)
    args = (3, 3, 1, 1, 1, 1, 1, 1, g, gc, 1.0)
    y = ops.DCNv3Function.apply(x, off, mask, *args, 256, 0)
    want = grid_sample_dcnv3(x, off, mask, 3, 3, 1, 1, 1, 1, 1, g, gc, 1.0, False)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, off, mask), dy)
    ref = torch.autograd.grad(want, (x, off, mask), dy)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    om = torch.randn(2, 6, 7, 56, dtype=torch.float64, requires_grad=True)
    y4 = v4.DCNv4Function.apply(x, om, *args, 256, 0)
    torch.testing.assert_close(y4, dct.dcnv4(x, om, *args, 0), rtol=0, atol=0)
    gi, gom = torch.autograd.grad(y4, (x, om), torch.ones_like(y4))
    assert torch.count_nonzero(gom[..., 54:]) == 0 and torch.count_nonzero(gom[..., :54]) > 0
    import DCNv3
    with pytest.raises(AttributeError, match="not served by deform_conv"):
        DCNv3.dcnv3_something
    with pytest.raises(NotImplementedError, match="softmax"):
        sys.modules["DCNv4.ext"].dcnv4_forward(x, om, *args, 256, 0, 8, 128, True)
    dct.uninstall()
    assert "DCNv3" not in sys.modules and "DCNv4.ext" not in sys.modules


def test_onnx_export_emits_internimages_node_and_dcnv4s():
    """TorchScript export: DCNv3 becomes mmdeploy::TRTDCNv3 with InternImage's attributes, DCNv4
    deform_conv::DCNv4 (crates/deform-conv-tract runs both: tests/onnx_models.rs)."""
    import io
    import warnings
    onnx = pytest.importorskip("onnx")
    for layer, x, node, domain in ((dct.DCNv3(channels=8, group=2, remove_center=True), torch.randn(1, 5, 6, 8),
                                    "TRTDCNv3", "mmdeploy"),
                                   (dct.DCNv4(channels=32, group=2), torch.randn(1, 16, 32), "DCNv4", "deform_conv")):
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(layer.eval(), (x,), f, opset_version=17, dynamo=False)
        model = onnx.load_from_string(f.getvalue())
        nodes = [n for n in model.graph.node if n.op_type == node]
        assert len(nodes) == 1 and nodes[0].domain == domain
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
        assert attrs["kernel_h"] == 3 and attrs["group"] == 2 and attrs["group_channels"] == layer.group_channels
        assert attrs["remove_center"] == layer.remove_center and attrs["pad_w"] == 1
