"""``torch_npu.npu_deformable_conv2d`` and ``npu_deformable_conv2dbk`` on numpy arrays.

``layout="NCHW"`` (default; what torch_npu really takes): input [N, C, H, W], weight
[Cout, C/g, kh, kw], offset [N, 3GK, Ho, Wo]. ``layout="NHWC"`` (the channels-last reading of its
document): input [N, H, W, C], weight [kh, kw, C/g, Cout], offset [N, Ho, Wo, 3GK]; outputs and
gradients come back in the same layout. Gradients follow torch_npu's gate: zero for every sample
outside (-1, H) x (-1, W).
"""
from . import _core
from ._args import array as _array
from ._args import flag as _flag
from ._args import integer as _integer
from ._args import ints as _ints


def npu_deformable_conv2d(input, weight, offset, bias, kernel_size, stride, padding, dilation=(1, 1, 1, 1),
                          groups=1, deformable_groups=1, modulated=True, *, layout="NCHW", backend="engine"):
    """Returns (output [N, Cout, Ho, Wo], deformed image [N, C, Ho*kh, Wo*kw])."""
    return _core.npu_forward(
        (_array("input", input), _array("weight", weight), _array("offset", offset), _array("bias", bias)),
        (_ints("kernel_size", kernel_size), _ints("stride", stride), _ints("padding", padding),
         _ints("dilation", dilation), _integer("groups", groups), _integer("deformable_groups", deformable_groups),
         _flag("modulated", modulated)), layout, backend)


def npu_deformable_conv2dbk(input, grad_output, offset_out, weight, offset, kernel_size, stride, padding,
                            dilation=(1, 1, 1, 1), groups=1, deformable_groups=1, modulated=True, *, layout="NCHW",
                            backend="engine"):
    """Returns (grad_input, grad_weight, grad_offset packed, grad_bias)."""
    return _core.npu_backward(
        (_array("input", input), _array("grad_output", grad_output), _array("offset_out", offset_out),
         _array("weight", weight), _array("offset", offset)),
        (_ints("kernel_size", kernel_size), _ints("stride", stride), _ints("padding", padding),
         _ints("dilation", dilation), _integer("groups", groups), _integer("deformable_groups", deformable_groups),
         _flag("modulated", modulated)), layout, backend)
