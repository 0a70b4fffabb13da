"""``mindspore.ops.deformable_conv2d`` on numpy arrays (packed offsets [dx | dy | mask])."""
from . import _core
from ._args import array as _array
from ._args import ints as _ints


def deformable_conv2d(x, weight, offsets, kernel_size, strides, padding, bias=None, dilations=(1, 1, 1, 1),
                      groups=1, deformable_groups=1, modulated=True, *, backend="engine"):
    """MindSpore's forward. strides / dilations are (1, 1, h, w); padding (top, bottom, left, right)."""
    return _core.mindspore_forward(
        _array("x", x), _array("weight", weight), _array("offsets", offsets), _array("bias", bias),
        _ints("kernel_size", kernel_size), _ints("strides", strides), _ints("padding", padding),
        _ints("dilations", dilations), int(groups), int(deformable_groups), bool(modulated), backend)


def deformable_conv2d_backward(grad_output, x, weight, offsets, kernel_size, strides, padding, bias=None,
                               dilations=(1, 1, 1, 1), groups=1, deformable_groups=1, modulated=True, *,
                               backend="engine"):
    """(grad_x, grad_weight, grad_offsets packed, grad_bias), MindSpore CPU's per-tap rule."""
    return _core.mindspore_backward(
        _array("grad_output", grad_output), _array("x", x), _array("weight", weight), _array("offsets", offsets),
        _array("bias", bias), _ints("kernel_size", kernel_size), _ints("strides", strides), _ints("padding", padding),
        _ints("dilations", dilations), int(groups), int(deformable_groups), bool(modulated), backend)
