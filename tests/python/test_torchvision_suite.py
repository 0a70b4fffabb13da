"""torchvision's own TestDeformConv (pytorch/vision test/test_ops.py), case by case, with our op
in torchvision's place, twice: as the drop-in (``deform_conv.torch``) and as torchvision's own
ops after ``deform_conv.torch.install()``. Same shapes, dtypes (float64), tolerances and
expectations as torchvision's suite; the expected values come from torchvision's own CPU kernel
(uninstalled), the live peer."""
import pytest
import torch
import torchvision
from torch.autograd import gradcheck
from torchvision import ops
from torchvision.models.feature_extraction import get_graph_node_names

import deform_conv.torch as dct


@pytest.fixture(params=["drop-in", "installed"])
def impl(request, monkeypatch):
    """(deform_conv2d, DeformConv2d) as a user would swap them in."""
    if request.param == "drop-in":
        monkeypatch.setattr(torchvision.ops, "deform_conv2d", dct.deform_conv2d)
        monkeypatch.setattr(torchvision.ops, "DeformConv2d", dct.DeformConv2d)
        yield dct.deform_conv2d, dct.DeformConv2d
    else:
        dct.install()
        try:
            yield ops.deform_conv2d, ops.DeformConv2d
        finally:
            dct.uninstall()


def torchvision_reference(*args, **kwargs):
    """torchvision's own CPU kernel (not installed over)."""
    was = dct.installed()
    dct.uninstall()
    try:
        from torchvision.ops import deform_conv as tv
        return tv.deform_conv2d(*args, **kwargs)
    finally:
        if was:
            dct.install()


def fn_args(contiguous, batch_sz, dtype=torch.float64):
    """torchvision's get_fn_args: 6 -> 2 channels, 2 weight groups, 3 offset groups, kernel 3x2,
    stride (2, 1), padding (1, 0), dilation (2, 1), image 5x4."""
    g = torch.Generator().manual_seed(batch_sz * 2 + contiguous)
    stride, pad, dilation = (2, 1), (1, 0), (2, 1)
    out_h = (5 + 2 * pad[0] - (dilation[0] * 2 + 1)) // stride[0] + 1
    out_w = (4 + 2 * pad[1] - (dilation[1] * 1 + 1)) // stride[1] + 1
    x = torch.rand(batch_sz, 6, 5, 4, dtype=dtype, generator=g, requires_grad=True)
    offset = torch.randn(batch_sz, 3 * 2 * 6, out_h, out_w, dtype=dtype, generator=g, requires_grad=True)
    mask = torch.randn(batch_sz, 3 * 6, out_h, out_w, dtype=dtype, generator=g, requires_grad=True)
    weight = torch.randn(2, 3, 3, 2, dtype=dtype, generator=g, requires_grad=True)
    bias = torch.randn(2, dtype=dtype, generator=g, requires_grad=True)
    if not contiguous:
        x = x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
        offset = offset.permute(1, 3, 0, 2).contiguous().permute(2, 0, 3, 1)
        mask = mask.permute(1, 3, 0, 2).contiguous().permute(2, 0, 3, 1)
        weight = weight.permute(3, 2, 0, 1).contiguous().permute(2, 3, 1, 0)
    return x, weight, offset, mask, bias, stride, pad, dilation


class Wrapper(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.n_inputs = 3

    def forward(self, a, b, c):
        self.layer(a, b, c)


def test_is_leaf_node(impl):
    _, Layer = impl
    model = Wrapper(Layer(6, 2, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2))
    names = get_graph_node_names(model)
    assert len(names) == 2 and len(names[0]) == len(names[1]) == 1 + model.n_inputs


@pytest.mark.parametrize("contiguous", (True, False))
@pytest.mark.parametrize("batch_sz", (0, 33))
def test_forward(impl, contiguous, batch_sz):
    _, Layer = impl
    x, _, offset, mask, _, stride, padding, dilation = fn_args(contiguous, batch_sz)
    layer = Layer(6, 2, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2).to(dtype=torch.float64)
    for m in (mask, None):
        res = layer(x, offset, m)
        expected = torchvision_reference(x, offset, layer.weight.data, layer.bias.data, stride=stride,
                                         padding=padding, dilation=dilation, mask=m)
        torch.testing.assert_close(res, expected, rtol=1e-5, atol=1e-5)


def test_wrong_sizes(impl):
    _, Layer = impl
    x, _, offset, mask, _, stride, padding, dilation = fn_args(True, 10)
    layer = Layer(6, 2, (3, 2), stride=stride, padding=padding, dilation=dilation, groups=2).double()
    with pytest.raises(RuntimeError, match="the shape of the offset"):
        layer(x, torch.rand_like(offset[:, :2]))
    with pytest.raises(RuntimeError, match=r"mask.shape\[1\] is not valid"):
        layer(x, offset, torch.rand_like(mask[:, :2]))


@pytest.mark.parametrize("contiguous", (True, False))
@pytest.mark.parametrize("batch_sz", (0, 33))
def test_backward(impl, contiguous, batch_sz):
    deform_conv2d, _ = impl
    x, weight, offset, mask, bias, stride, padding, dilation = fn_args(contiguous, batch_sz)

    def func(x_, offset_, mask_, weight_, bias_):
        return deform_conv2d(x_, offset_, weight_, bias_, stride=stride, padding=padding, dilation=dilation,
                             mask=mask_)

    gradcheck(func, (x, offset, mask, weight, bias), nondet_tol=1e-5, fast_mode=True)

    def func_no_mask(x_, offset_, weight_, bias_):
        return deform_conv2d(x_, offset_, weight_, bias_, stride=stride, padding=padding, dilation=dilation,
                             mask=None)

    gradcheck(func_no_mask, (x, offset, weight, bias), nondet_tol=1e-5, fast_mode=True)

    @torch.jit.script
    def script_func(x_, offset_, mask_, weight_, bias_, stride_, pad_, dilation_):
        # type:(Tensor, Tensor, Tensor, Tensor, Tensor, Tuple[int, int], Tuple[int, int], Tuple[int, int])->Tensor
        return ops.deform_conv2d(x_, offset_, weight_, bias_, stride=stride_, padding=pad_, dilation=dilation_,
                                 mask=mask_)

    gradcheck(lambda z, off, msk, wei, bi: script_func(z, off, msk, wei, bi, stride, padding, dilation),
              (x, offset, mask, weight, bias), nondet_tol=1e-5, fast_mode=True)

    @torch.jit.script
    def script_func_no_mask(x_, offset_, weight_, bias_, stride_, pad_, dilation_):
        # type:(Tensor, Tensor, Tensor, Tensor, Tuple[int, int], Tuple[int, int], Tuple[int, int])->Tensor
        return ops.deform_conv2d(x_, offset_, weight_, bias_, stride=stride_, padding=pad_, dilation=dilation_,
                                 mask=None)

    gradcheck(lambda z, off, wei, bi: script_func_no_mask(z, off, wei, bi, stride, padding, dilation),
              (x, offset, weight, bias), nondet_tol=1e-5, fast_mode=True)


def test_forward_scriptability(impl):
    _, Layer = impl
    scripted = torch.jit.script(Layer(in_channels=8, out_channels=8, kernel_size=3))
    x, off = torch.rand(1, 8, 6, 6), torch.randn(1, 18, 4, 4)
    torch.testing.assert_close(scripted(x, off), torchvision_reference(x, off, scripted.weight, scripted.bias))


def test_opcheck():
    x, weight, offset, mask, bias, stride, padding, dilation = fn_args(False, 2)
    torch.library.opcheck(torch.ops.deform_conv.deform_conv2d.default,
                          (x, offset, weight, bias, mask, list(stride), list(padding), list(dilation), False),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
