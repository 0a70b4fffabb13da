"""The red team's second pass (issue 23): zero output channels, empty and broadcast layouts, thread
counts, the OpenMP registration and loose arguments. Each case is a clear error naming the
parameter, or the peer's empty result; never a panic (a BaseException), abort or segfault."""
import numpy as np
import pytest
import torch
import torchvision

import deform_conv as dc
import deform_conv.mmcv as dmm
import deform_conv.torch as dct

rng = np.random.default_rng()
X = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
OFF = rng.standard_normal((1, 18, 5, 5)).astype(np.float32)
W0 = np.zeros((0, 2, 3, 3), np.float32)
W = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
PACKED = rng.standard_normal((1, 27, 5, 5)).astype(np.float32)


def test_zero_output_channels_give_torchvisions_empty_result():
    want = torchvision.ops.deform_conv2d(torch.tensor(X), torch.tensor(OFF), torch.tensor(W0), padding=1)
    assert tuple(want.shape) == (1, 0, 5, 5)
    assert dc.deform_conv2d(X, OFF, W0, padding=1).shape == (1, 0, 5, 5)
    assert tuple(dct.deform_conv2d(torch.tensor(X), torch.tensor(OFF), torch.tensor(W0), padding=(1, 1)).shape) \
        == (1, 0, 5, 5)
    g = dc.deform_conv2d_backward(np.zeros((1, 0, 5, 5), np.float32), X, OFF, W0, padding=1)
    assert not g.input.any() and not g.offset.any() and g.weight.shape == (0, 2, 3, 3)
    assert dc.onnx.deform_conv(X, W0, OFF, pads=[1, 1, 1, 1]).shape == (1, 0, 5, 5)
    y, d = dc.npu.npu_deformable_conv2d(X, W0, PACKED, None, [3, 3], [1, 1, 1, 1], [1, 1, 1, 1])
    assert y.shape == (1, 0, 5, 5) and d.shape == (1, 2, 15, 15)
    assert dc.mindspore.deformable_conv2d(X, W0, PACKED, (3, 3), (1, 1, 1, 1), (1, 1, 1, 1)).shape == (1, 0, 5, 5)
    mm = dmm.deform_conv2d(torch.tensor(X), torch.tensor(OFF), torch.tensor(W0), padding=1)
    assert tuple(mm.shape) == (1, 0, 5, 5)
    dct.install()
    try:
        y = torchvision.ops.deform_conv2d(torch.tensor(X), torch.tensor(OFF), torch.tensor(W0), padding=1)
        assert tuple(y.shape) == (1, 0, 5, 5)
    finally:
        dct.uninstall()


def test_layout_converters_take_empty_and_refuse_huge_broadcasts():
    assert dc.interleaved_to_packed(np.zeros((1, 0, 2, 2), np.float32)).shape == (1, 0, 2, 2)
    off, mask = dc.packed_to_interleaved(np.zeros((1, 0, 2, 2), np.float32))
    assert off.shape == (1, 0, 2, 2) and mask.shape == (1, 0, 2, 2)
    big = np.broadcast_to(np.float32(1), (1, 2 ** 36, 1, 1))
    for f in (dc.nchw_to_nhwc, dc.oihw_to_hwcn):
        with pytest.raises(ValueError, match="cannot allocate"):
            f(big)
    with pytest.raises(ValueError, match="cannot allocate"):
        dc.interleaved_to_packed(np.broadcast_to(np.float32(1), (1, 2 ** 36, 1, 1)))


def test_layout_converters_match_their_definition():
    off = rng.standard_normal((2, 6, 3, 4)).astype(np.float32)
    mask = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    packed = dc.interleaved_to_packed(off, mask)
    np.testing.assert_array_equal(packed, np.concatenate([off[:, 1::2], off[:, 0::2], mask], axis=1))
    back, m = dc.packed_to_interleaved(packed)
    np.testing.assert_array_equal(back, off)
    np.testing.assert_array_equal(m, mask)
    np.testing.assert_array_equal(dc.interleaved_to_packed(off)[:, 6:], np.ones_like(mask))


def test_thread_counts_beyond_any_system_are_errors():
    before = dc.num_threads()
    with pytest.raises(ValueError, match="threads: expected a thread count of at most 1024"):
        dc.set_num_threads(100000)
    assert dc.num_threads() == before
    np.testing.assert_array_equal(dc.deform_conv2d(X, OFF, W, padding=1), dc.deform_conv2d(X, OFF, W, padding=1))


def test_the_openmp_runtime_is_never_taken_from_integers():
    with pytest.raises(TypeError):
        dc._core.use_openmp(4096, 4096, 2)
    # What the package registers itself is the runtime found by name in the loaded library.
    assert dc._core.use_openmp(torch.get_num_threads()) in (True, False)
    y = dct.deform_conv2d(torch.tensor(X), torch.tensor(OFF), torch.tensor(W), padding=(1, 1))
    torch.testing.assert_close(y, torchvision.ops.deform_conv2d(torch.tensor(X), torch.tensor(OFF),
                                                                torch.tensor(W), padding=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: dc.onnx.deform_conv(X, W, OFF, pads=[1] * 4, group=1.7), TypeError, "group: expected an int"),
    (lambda: dc.onnx.deform_conv(X, W, OFF, pads=[1] * 4, group="1"), TypeError, "group: expected an int"),
    (lambda: dc.onnx.deform_conv(X, W, OFF, pads=[1] * 4, group=None), TypeError, "group: expected an int"),
    (lambda: dc.onnx.deform_conv(X, W, OFF, pads=[1] * 4, offset_group=2 ** 70), ValueError, "offset_group"),
    (lambda: dc.npu.npu_deformable_conv2d(X, W, PACKED, None, [3, 3], [1] * 4, [1] * 4, modulated="False"),
     TypeError, "modulated: expected a bool"),
    (lambda: dc.npu.npu_deformable_conv2d(X, W, PACKED, None, [3, 3], [1] * 4, [1] * 4, groups=1.0),
     TypeError, "groups: expected an int"),
    (lambda: dc.mindspore.deformable_conv2d(X, W, PACKED, (3, 3), (1,) * 4, (1,) * 4, deformable_groups="1"),
     TypeError, "deformable_groups: expected an int"),
    (lambda: dc.mindspore.deformable_conv2d(X, W, PACKED, (3, 3), (1,) * 4, (1,) * 4, modulated="False"),
     TypeError, "modulated: expected a bool"),
    (lambda: dct.npu_deformable_conv2d(torch.tensor(X), torch.tensor(W), torch.tensor(PACKED), None, [3, 3],
                                       [1] * 4, [1] * 4, groups=1.5), TypeError, "groups: expected an int"),
    (lambda: dmm.DeformConv2d(2, 2, 3, groups=0), ValueError, "groups: expected a positive integer"),
    (lambda: dmm.ModulatedDeformConv2d(2, 2, 3, deform_groups=0), ValueError, "deform_groups"),
    (lambda: dmm.DeformConv2d(2, 2, 3, im2col_step=0), ValueError, "im2col_step"),
    (lambda: dmm.deform_conv2d(torch.tensor(X), torch.tensor(OFF), torch.tensor(W), stride=0), ValueError,
     r"stride\[0\]: expected a positive integer"),
    (lambda: dmm.deform_conv2d(torch.tensor(X), torch.tensor(OFF), torch.tensor(W), padding=1, im2col_step=0),
     ValueError, "im2col_step"),
    (lambda: dmm.deform_conv2d(torch.tensor(X), torch.tensor(OFF), torch.tensor(W), padding=1, groups=0),
     ValueError, "groups"),
])
def test_loose_arguments_are_named_errors(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


def _fake(stride):
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        return torch.ops.deform_conv.deform_conv2d(torch.empty(1, 2, 5, 5), torch.empty(1, 18, 5, 5),
                                                   torch.empty(2, 2, 3, 3), None, None, stride, [1, 1], [1, 1],
                                                   False)


def test_the_fake_kernel_checks_as_eager_does():
    assert tuple(_fake([1, 1]).shape) == (1, 2, 5, 5)
    with pytest.raises(ValueError, match=r"stride\[0\]: expected a positive integer, got 0"):
        _fake([0, 1])
    with pytest.raises(ValueError, match="stride: expected 2 values, got 1"):
        _fake([1])


def test_installed_kernel_checks_torchvisions_explicit_group_counts():
    x, w, off = torch.tensor(X), torch.tensor(W), torch.tensor(OFF)
    mask, bias = torch.ones(1, 9, 5, 5), torch.zeros(2)
    op = torch.ops.torchvision.deform_conv2d
    dct.install()
    try:
        op(x, w, off, mask, bias, 1, 1, 1, 1, 1, 1, 1, 1, False)
        with pytest.raises(RuntimeError, match=r"groups \(n_weight_grps\)"):
            op(x, w, off, mask, bias, 1, 1, 1, 1, 1, 1, 2, 1, False)
        with pytest.raises(RuntimeError, match=r"offset_groups \(n_offset_grps\)"):
            op(x, w, off, mask, bias, 1, 1, 1, 1, 1, 1, 1, 3, False)
    finally:
        dct.uninstall()


def test_integer_arrays_are_never_read_as_bfloat16():
    """A uint16 numpy array is an error; only the explicit Bf16 marker makes 16-bit bits bfloat16."""
    from deform_conv import _core
    rng = np.random.default_rng()
    x = rng.integers(0, 2**16, (1, 2, 4, 4), dtype=np.uint16)
    off = np.zeros((1, 18, 4, 4), np.uint16)
    w = np.zeros((3, 2, 3, 3), np.uint16)
    with pytest.raises(TypeError, match="input: expected dtype float16, float32 or float64, got uint16"):
        dc.deform_conv2d(x, off, w, padding=1)
    with pytest.raises(TypeError, match="Bf16: expected a uint16 numpy array"):
        _core.Bf16(np.zeros(3, np.float32))
    # Marked, the same bits are bfloat16 and give torch's bfloat16 answer.
    import torch
    xb, ob, wb = (torch.from_numpy(a.astype(np.float32) / 65536.0).bfloat16() for a in (x, off, w))
    y = _core.torchvision_forward(
        tuple(_core.Bf16(t.view(torch.uint16).numpy()) for t in (xb, ob, wb)) + (None, None), ([1, 1], [1, 1], [1, 1]))
    want = dc.deform_conv2d(xb.float().numpy(), ob.float().numpy(), wb.float().numpy(), padding=1)
    got = torch.from_numpy(y).view(torch.bfloat16).float().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)
