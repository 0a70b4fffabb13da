"""Bad input raises ValueError / TypeError with the tensor or parameter named, never crashes."""
import numpy as np
import pytest
import torch

import deform_conv as dc
import deform_conv.torch as dct

X = np.zeros((1, 4, 6, 6), np.float32)
W = np.zeros((3, 4, 3, 3), np.float32)
OFF = np.zeros((1, 18, 4, 4), np.float32)
PACKED = np.zeros((1, 27, 4, 4), np.float32)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: dc.deform_conv2d(X[0], OFF, W), ValueError, "input: expected a 4-D tensor"),
    (lambda: dc.deform_conv2d(X, OFF.astype(np.float64), W), TypeError, "offset: expected dtype float32"),
    (lambda: dc.deform_conv2d(X.astype(np.int32), OFF, W), TypeError, "input: expected dtype"),
    (lambda: dc.deform_conv2d(X, OFF[:, :17], W), ValueError, "offset"),
    (lambda: dc.deform_conv2d(X, OFF, W, padding=-1), ValueError, "padding"),
    (lambda: dc.deform_conv2d(X, OFF, W, stride=0), ValueError, "stride"),
    (lambda: dc.deform_conv2d(X, OFF, W, stride=(1, 2, 3)), ValueError, "stride"),
    (lambda: dc.deform_conv2d(X, OFF, W, stride=True), TypeError, "stride"),
    (lambda: dc.deform_conv2d(X, OFF, W, dilation=1.5), TypeError, "dilation"),
    (lambda: dc.deform_conv2d(X, OFF, W, bias=np.zeros(2, np.float32)), ValueError, "bias"),
    (lambda: dc.deform_conv2d(X, OFF, W, mask=np.zeros((1, 8, 4, 4), np.float32)), ValueError, "mask"),
    (lambda: dc.deform_conv2d(X, OFF, np.zeros((3, 3, 3, 3), np.float32)), ValueError, "weight"),
    (lambda: dc.deform_conv2d(X, np.zeros((1, 18, 5, 4), np.float32), W), ValueError, "offset"),
    (lambda: dc.deform_conv2d(np.zeros((1, 4, 1, 1), np.float32), np.zeros((1, 18, 1, 1), np.float32), W),
     ValueError, "output size"),
    (lambda: dc.deform_conv2d_backward(np.zeros((1, 3, 4, 5), np.float32), X, OFF, W), ValueError, "grad_output"),
    (lambda: dc.deform_conv2d(X, OFF, W, backend="gpu"), ValueError, "backend"),
    (lambda: dc.deform_conv2d("x", OFF, W), TypeError, "input"),
    (lambda: dc.mindspore.deformable_conv2d(X, W, PACKED, (3, 3), (1, 1, 1, 1), (0, 0, 0, 0), modulated=False),
     ValueError, "modulated"),
    (lambda: dc.mindspore.deformable_conv2d(X, W, PACKED, (3, 3), (2, 1, 1, 1), (0, 0, 0, 0)), ValueError, "strides"),
    (lambda: dc.mindspore.deformable_conv2d(X, W, PACKED, (3, 3), (1, 1), (0, 0, 0, 0)), ValueError, "strides"),
    (lambda: dc.mindspore.deformable_conv2d(X, W, PACKED, (5, 5), (1, 1, 1, 1), (0, 0, 0, 0)), ValueError,
     "kernel_size"),
    (lambda: dc.mindspore.deformable_conv2d(X, W, PACKED, (3, 3), (1, 1, 1, 1), (0, 0, 0)), ValueError, "padding"),
    (lambda: dc.mindspore.deformable_conv2d(X, W, PACKED, (3, 3), (1, 1, 1, 1), (0, 0, 0, 0), groups=3), ValueError,
     "groups"),
    (lambda: dc.mindspore.deformable_conv2d(X, W, PACKED, (3, 3), (1, 1, 1, 1), (0, 0, 0, 0), deformable_groups=3),
     ValueError, "deformable_groups"),
    (lambda: dc.npu.npu_deformable_conv2d(X, W, PACKED, None, (3, 3), (1, 1, 1, 1), (0, 0, 0, 0), layout="CHWN"),
     ValueError, "layout"),
    (lambda: dc.npu.npu_deformable_conv2dbk(X, np.zeros((1, 3, 4, 4), np.float32), np.zeros((1, 4, 12, 11), np.float32),
                                            W, PACKED, (3, 3), (1, 1, 1, 1), (0, 0, 0, 0)), ValueError, "offset_out"),
    (lambda: dc.onnx.deform_conv(X, W, OFF, pads=[0, 0]), ValueError, "pads"),
    (lambda: dc.onnx.deform_conv(X, W, OFF, group=0), ValueError, "group"),
    (lambda: dc.interleaved_to_packed(OFF[:, :17]), ValueError, "offset"),
    (lambda: dc.deform_conv2d(X, OFF, W, padding=2**70), ValueError, "padding: expected an integer that fits in 64"),
    (lambda: dc.deform_conv2d(X, OFF, W, stride=(1, -2**80)), ValueError, "stride: expected an integer"),
    (lambda: dc.set_num_threads(-1), ValueError, "set_num_threads: n: expected an int between 0"),
    (lambda: dc.set_num_threads(2.5), TypeError, "set_num_threads: n: expected an int"),
    (lambda: dc.deform_conv2d(X.tolist(), OFF, W), TypeError, "input: expected a numpy array, got list"),
    (lambda: dct.deform_conv2d(torch.zeros((1, 4, 6, 6), dtype=torch.int64), torch.from_numpy(OFF),
                               torch.from_numpy(W)), TypeError, "input: expected dtype float16, bfloat16"),
])
def test_bad_input_raises(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value), str(info.value)


def test_huge_shapes_are_errors_not_crashes():
    x = np.zeros((1, 1, 1, 1), np.float32)
    w = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError):
        dc.deform_conv2d(x, np.zeros((1, 2, 1, 1), np.float32), w, padding=2**62)
    with pytest.raises(ValueError):
        dc.deform_conv2d(x, np.zeros((1, 8, 1, 1), np.float32), np.zeros((1, 1, 2, 2), np.float32), dilation=2**62)
    with pytest.raises(ValueError):
        dc.deform_conv2d(x, np.zeros((1, 8, 1, 1), np.float32), np.zeros((1, 1, 2, 2), np.float32), stride=2**63 - 1,
                         padding=2**61)


def test_torch_errors():
    x, off, w = (torch.tensor(a) for a in (X, OFF, W))
    with pytest.raises(ValueError, match="CPU"):
        dct.deform_conv2d(x.to("meta"), off, w)
    with pytest.raises(TypeError, match="offset"):
        dct.deform_conv2d(x, off.double(), w)
    with pytest.raises(TypeError, match="input"):
        dct.deform_conv2d(x.int(), off.int(), w.int())
    with pytest.raises(ValueError, match="offset"):
        dct.deform_conv2d(x, off[:, :17], w)


def test_empty_batch_is_valid():
    y = dc.deform_conv2d(X[:0], OFF[:0], W)
    assert y.shape == (0, 3, 4, 4)
