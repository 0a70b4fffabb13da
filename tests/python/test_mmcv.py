"""deform_conv.mmcv against mmcv's own published CPU expectations (open-mmlab/mmcv
tests/test_ops/test_deform_conv.py and test_modulated_deform_conv.py: the inputs, weights and
expected outputs and gradients below are their values), float64, float32 and float16, and
mmcv's API surface (names, state_dict keys, initialisation, assertions)."""
import numpy as np
import pytest
import torch

import deform_conv.torch as dct
from deform_conv.mmcv import (DeformConv2d, DeformConv2dPack, ModulatedDeformConv2d, ModulatedDeformConv2dPack,
                              deform_conv2d, modulated_deform_conv2d)

# --- mmcv test_deform_conv.py (DCN v1): a 3x3 image, a 2x2 kernel, an offset conv.
V1_INPUT = [[[[1., 2., 3.], [0., 1., 2.], [3., 5., 2.]]]]
V1_OFFSET_WEIGHT = [[[0.1, 0.4, 0.6, 0.1]], [[0.3, 0.2, 0.1, 0.3]], [[0.5, 0.5, 0.2, 0.8]], [[0.8, 0.3, 0.9, 0.1]],
                    [[0.3, 0.1, 0.2, 0.5]], [[0.3, 0.7, 0.5, 0.3]], [[0.6, 0.2, 0.5, 0.3]], [[0.4, 0.1, 0.8, 0.4]]]
V1_OFFSET_BIAS = [0.7, 0.1, 0.8, 0.5, 0.6, 0.5, 0.4, 0.7]
V1_WEIGHT = [[[0.4, 0.2, 0.1, 0.9]]]
V1_OUT = [[[[1.650, 0.], [0.000, 0.]]]]
V1_X_GRAD = [[[[-0.666, 0.204, 0.000], [0.030, -0.416, 0.012], [0.000, 0.252, 0.129]]]]
V1_OFFSET_WEIGHT_GRAD = [[[[1.44, 2.88], [0.00, 1.44]]], [[[-0.72, -1.44], [0.00, -0.72]]],
                         [[[0.00, 0.00], [0.00, 0.00]]], [[[0.00, 0.00], [0.00, 0.00]]],
                         [[[-0.10, -0.20], [0.00, -0.10]]], [[[-0.08, -0.16], [0.00, -0.08]]],
                         [[[-0.54, -1.08], [0.00, -0.54]]], [[[-0.54, -1.08], [0.00, -0.54]]]]
V1_OFFSET_BIAS_GRAD = [1.44, -0.72, 0., 0., -0.10, -0.08, -0.54, -0.54]
V1_WEIGHT_GRAD = [[[[3.62, 0.], [0.40, 0.18]]]]

# --- mmcv test_modulated_deform_conv.py (DCN v2).
V2_INPUT = [[[[1., 2., 3.], [1., 2., 3.], [1., 2., 3.]]]]
V2_OUT = [[[[0.5, 1.5, 2.5, 1.5], [1.0, 3.0, 5.0, 3.0], [1.0, 3.0, 5.0, 3.0], [0.5, 1.5, 2.5, 1.5]]]]
V2_INPUT_GRAD = [[[[2., 2., 2.], [2., 2., 2.], [2., 2., 2.]]]]
V2_W_GRAD = [[[[9., 9.], [9., 9.]]]]
V2_OFFSET_W_GRAD = [[[[-7.0, -4.0], [0.0, 0.0]]], [[[-9.0, 7.5], [-6.0, 5.0]]], [[[-4.0, -7.0], [0.0, 0.0]]],
                    [[[-7.5, -9.0], [-5.0, -6.0]]], [[[-7.0, -4.0], [-7.0, -4.0]]], [[[-6.0, 5.0], [-9.0, 7.5]]],
                    [[[-4.0, -7.0], [-4.0, -7.0]]], [[[-5.0, -6.0], [-7.5, -9.0]]], [[[10.5, 6.0], [7.0, 4.0]]],
                    [[[6.0, 10.5], [4.0, 7.0]]], [[[7.0, 4.0], [10.5, 6.0]]], [[[4.0, 7.0], [6.0, 10.5]]]]
V2_OFFSET_B_GRAD = [-3.0, -1.5, -3.0, -1.5, -3.0, -1.5, -3.0, -1.5, 4.5, 4.5, 4.5, 4.5]


def close(t, want, tol):
    assert np.allclose(t.detach().double().numpy(), np.asarray(want, np.float64), tol), t


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-3), (torch.float32, 1e-3), (torch.float16, 1e-1)])
@pytest.mark.parametrize("batch, im2col_step", [(10, 2), (1, 2)])
def test_mmcv_deform_conv_expected_values(dtype, tol, batch, im2col_step):
    x = torch.tensor(np.repeat(V1_INPUT, batch, axis=0), dtype=dtype, requires_grad=True)
    model = DeformConv2dPack(in_channels=1, out_channels=1, kernel_size=2, stride=1, padding=0,
                             im2col_step=im2col_step)
    model.conv_offset.weight.data = torch.tensor(V1_OFFSET_WEIGHT).reshape(8, 1, 2, 2)
    model.conv_offset.bias.data = torch.tensor(V1_OFFSET_BIAS)
    model.weight.data = torch.tensor(V1_WEIGHT).reshape(1, 1, 2, 2)
    model.type(dtype)
    out = model(x)
    out.backward(torch.ones_like(out))
    assert out.dtype == dtype
    close(out, np.repeat(V1_OUT, batch, axis=0), tol)
    close(x.grad, np.repeat(V1_X_GRAD, batch, axis=0), tol)
    close(model.conv_offset.weight.grad / batch, V1_OFFSET_WEIGHT_GRAD, tol)
    close(model.conv_offset.bias.grad / batch, V1_OFFSET_BIAS_GRAD, tol)
    close(model.weight.grad / batch, V1_WEIGHT_GRAD, tol)


def test_mmcv_deform_conv_assertions():
    assert not hasattr(DeformConv2d(1, 1, 2, stride=1, padding=0), "bias")
    with pytest.raises(AssertionError):
        DeformConv2d(1, 1, 2, stride=1, padding=0, bias=True)
    with pytest.raises(AssertionError):
        DeformConv2d(3, 2, 3, groups=2)
    with pytest.raises(AssertionError):
        DeformConv2d(3, 4, 3, groups=3)
    model = DeformConv2dPack(1, 1, 2, im2col_step=3)
    with pytest.raises(AssertionError, match="batch size must be divisible by im2col_step"):
        model(torch.zeros(10, 1, 3, 3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_mmcv_modulated_deform_conv_expected_values(dtype):
    x = torch.tensor(V2_INPUT, dtype=dtype, requires_grad=True)
    dcn = ModulatedDeformConv2dPack(1, 1, kernel_size=(2, 2), stride=1, padding=1, deform_groups=1, bias=False)
    dcn.weight.data.fill_(1.0)
    dcn.type(dtype)
    out = dcn(x)
    out.sum().backward()
    close(out, V2_OUT, 1e-2)
    close(x.grad, V2_INPUT_GRAD, 1e-2)
    close(dcn.weight.grad, V2_W_GRAD, 1e-2)
    # These depend on mmcv's rule at the border: samples at exactly -1 get no offset gradient.
    close(dcn.conv_offset.weight.grad, V2_OFFSET_W_GRAD, 1e-2)
    close(dcn.conv_offset.bias.grad, V2_OFFSET_B_GRAD, 1e-2)


def test_the_rule_is_mmcvs_not_torchvisions():
    """The same layer through deform_conv.torch (torchvision's per-tap rule) gives another offset
    gradient: the expected values above would fail, so the test above discriminates."""
    x = torch.tensor(V2_INPUT, dtype=torch.float64)
    dcn = ModulatedDeformConv2dPack(1, 1, kernel_size=(2, 2), stride=1, padding=1, bias=False).double()
    dcn.weight.data.fill_(1.0)
    out = dcn.conv_offset(x)
    o1, o2, m = torch.chunk(out, 3, dim=1)
    off = torch.cat((o1, o2), 1).detach().requires_grad_()
    dct.deform_conv2d(x, off, dcn.weight, None, (1, 1), (1, 1), (1, 1), torch.sigmoid(m)).sum().backward()
    tv_bias_grad = off.grad.sum(dim=(0, 2, 3))
    assert not np.allclose(tv_bias_grad.numpy(), V2_OFFSET_B_GRAD[:8], 1e-2)


def test_mmcv_api_surface():
    m = ModulatedDeformConv2dPack(4, 6, 3, padding=1, deformable_groups=2)
    assert m.deform_groups == 2
    assert set(m.state_dict()) == {"weight", "bias", "conv_offset.weight", "conv_offset.bias"}
    assert m.conv_offset.out_channels == 2 * 3 * 9
    assert float(m.conv_offset.weight.detach().abs().sum()) == 0 and float(m.bias.detach().abs().sum()) == 0
    bound = 1 / np.sqrt(4 * 9)
    assert float(m.weight.detach().abs().max()) <= bound
    # A version-1 checkpoint's offset conv keys are renamed as mmcv renames them.
    from deform_conv.mmcv import _upgrade_offset_keys
    sd = {"dcn_offset.weight": 1, "dcn_offset.bias": 2, "dcn.weight": 3}
    _upgrade_offset_keys(sd, "dcn.", {})
    assert sd == {"dcn.conv_offset.weight": 1, "dcn.conv_offset.bias": 2, "dcn.weight": 3}
    # Functional forms, v1 and v2, agree with the modules.
    x = torch.randn(2, 4, 7, 7)
    off = torch.randn(2, 2 * 2 * 9, 7, 7)
    mask = torch.rand(2, 2 * 9, 7, 7)
    y = modulated_deform_conv2d(x, off, mask, m.weight, m.bias, 1, 1, 1, 1, 2)
    assert torch.equal(y, ModulatedDeformConv2d.forward(m, x, off, mask))
    v1 = DeformConv2d(4, 6, 3, padding=1, deform_groups=2)
    assert torch.equal(deform_conv2d(x, off, v1.weight, 1, 1, 1, 1, 2), v1(x, off))
    with pytest.raises(RuntimeError, match="too small"):
        modulated_deform_conv2d(torch.zeros(1, 4, 2, 2), torch.zeros(1, 36, 1, 1), torch.zeros(1, 18, 1, 1),
                                m.weight, None, 1, 0, 1, 1, 2)
