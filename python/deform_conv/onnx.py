"""ONNX ``DeformConv`` (opset 19) on numpy arrays."""
from . import _core
from ._args import array as _array
from ._args import integer as _integer
from ._args import maybe_ints as _maybe_ints


def deform_conv(X, W, offset, B=None, mask=None, dilations=None, group=1, kernel_shape=None, offset_group=1,
                pads=None, strides=None, *, backend="engine"):
    """Y = DeformConv(X, W, offset, B, mask). ``pads`` is [top, left, bottom, right]."""
    return _core.onnx_forward(
        (_array("X", X), _array("W", W), _array("offset", offset), _array("B", B), _array("mask", mask)),
        (_maybe_ints("dilations", dilations), _integer("group", group), _maybe_ints("kernel_shape", kernel_shape),
         _integer("offset_group", offset_group), _maybe_ints("pads", pads), _maybe_ints("strides", strides)),
        backend)
