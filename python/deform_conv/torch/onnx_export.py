"""ONNX export of the DCNv2 ops (ours and torchvision's) to the standard ``DeformConv`` node."""
import torch

def _onnx_attrs(input_shape, weight_shape, offset_channels, stride, padding, dilation):
    c, cg = input_shape[1], weight_shape[1]
    taps = weight_shape[2] * weight_shape[3]
    return dict(group=c // cg, offset_group=offset_channels // (2 * taps), kernel_shape=list(weight_shape[2:]),
                pads=[padding[0], padding[1], padding[0], padding[1]], strides=list(stride),
                dilations=list(dilation))


def _register_onnx_symbolics():
    """The TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): our DCNv2 op and
    torchvision's become the standard ``DeformConv`` node (opset 19); DCNv3 InternImage's
    ``mmdeploy::TRTDCNv3``, DCNv4 ``deform_conv::DCNv4``, attention mmdeploy's
    ``mmdeploy::MMCVMultiScaleDeformableAttention`` (``deform-conv onnx`` runs all of them)."""
    try:
        from torch.onnx import register_custom_op_symbolic, symbolic_helper as sh
    except ImportError:  # pragma: no cover - torch without the TorchScript exporter
        return

    def emit(g, input, weight, offset, bias, mask, stride, padding, dilation):
        shapes = [sh._get_tensor_sizes(t) for t in (input, weight, offset)]
        if any(s is None or any(d is None for d in s[1:]) for s in shapes):
            raise RuntimeError("DeformConv export: the channel and kernel sizes of input, weight and offset must be "
                               "static")
        a = _onnx_attrs(shapes[0], shapes[1], shapes[2][1], stride, padding, dilation)
        if bias is None or sh._is_none(bias):
            bias = g.op("Constant", value_t=torch.zeros(shapes[1][0]))
        ins = [input, weight, offset, bias] + ([] if mask is None or sh._is_none(mask) else [mask])
        return g.op("DeformConv", *ins, dilations_i=a["dilations"], group_i=a["group"],
                    kernel_shape_i=a["kernel_shape"], offset_group_i=a["offset_group"], pads_i=a["pads"],
                    strides_i=a["strides"])

    @sh.parse_args("v", "v", "v", "v", "v", "is", "is", "is", "b")
    def ours(g, input, offset, weight, bias, mask, stride, padding, dilation, open_gate):
        return emit(g, input, weight, offset, bias, mask, stride, padding, dilation)

    @sh.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
    def torchvisions(g, input, weight, offset, mask, bias, sh_, sw, ph, pw, dh, dw, groups, offset_groups, use_mask):
        return emit(g, input, weight, offset, bias, mask if use_mask else None, (sh_, sw), (ph, pw), (dh, dw))

    register_custom_op_symbolic("deform_conv::deform_conv2d", ours, 19)
    register_custom_op_symbolic("torchvision::deform_conv2d", torchvisions, 19)

    @sh.parse_args("v", "v", "v", "is", "f", "b")
    def dcnv3(g, input, offset, mask, ints, offset_scale, remove_center):
        """InternImage's node (its DCNv3Function.symbolic's name and attributes); DCNv4, which has
        no node of its own upstream, as ``deform_conv::DCNv4`` with the same attributes."""
        kh, kw, s_h, s_w, ph, pw, dh, dw, group, gc = ints
        attrs = dict(kernel_h_i=kh, kernel_w_i=kw, stride_h_i=s_h, stride_w_i=s_w, pad_h_i=ph, pad_w_i=pw,
                     dilation_h_i=dh, dilation_w_i=dw, group_i=group, group_channels_i=gc,
                     offset_scale_f=offset_scale, im2col_step_i=256, remove_center_i=int(remove_center))
        if mask is None or sh._is_none(mask):
            return g.op("deform_conv::DCNv4", input, offset, **attrs)
        return g.op("mmdeploy::TRTDCNv3", input, offset, mask, **attrs)

    @sh.parse_args("v", "is", "is", "v", "v")
    def msda(g, value, shapes, starts, loc, attn):
        """mmdeploy's node; the levels (static in the traced model) as int64 constants."""
        levels = len(starts)
        ss = g.op("Constant", value_t=torch.tensor(shapes, dtype=torch.int64).view(levels, 2))
        st = g.op("Constant", value_t=torch.tensor(starts, dtype=torch.int64))
        return g.op("mmdeploy::MMCVMultiScaleDeformableAttention", value, ss, st, loc, attn, im2col_step_i=64)

    register_custom_op_symbolic("deform_conv::dcnv3", dcnv3, 9)
    register_custom_op_symbolic("deform_conv::ms_deform_attn", msda, 9)


_register_onnx_symbolics()


def onnx_translations() -> dict:
    """Translations for the dynamo exporter:
    ``torch.onnx.export(model, args, f, opset_version=19, custom_translation_table=onnx_translations())``.
    Our op (and torchvision's, after :func:`install` or not) become the standard ``DeformConv``.
    Needs ``onnxscript``.
    """
    from onnxscript import opset19 as op

    def _shape(v):
        return [int(d) for d in v.shape]

    def ours(input, offset, weight, bias=None, mask=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
             open_gate=False):
        a = _onnx_attrs(_shape(input), _shape(weight), _shape(offset)[1], stride, padding, dilation)
        return op.DeformConv(input, weight, offset, bias, mask, dilations=a["dilations"], group=a["group"],
                             kernel_shape=a["kernel_shape"], offset_group=a["offset_group"], pads=a["pads"],
                             strides=a["strides"])

    def torchvisions(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                     offset_groups, use_mask):
        a = _onnx_attrs(_shape(input), _shape(weight), _shape(offset)[1], (stride_h, stride_w), (pad_h, pad_w),
                        (dil_h, dil_w))
        return op.DeformConv(input, weight, offset, bias, mask if use_mask else None, dilations=a["dilations"],
                             group=a["group"], kernel_shape=a["kernel_shape"], offset_group=a["offset_group"],
                             pads=a["pads"], strides=a["strides"])

    table = {torch.ops.deform_conv.deform_conv2d.default: ours}
    try:
        import torchvision  # noqa: F401
        table[torch.ops.torchvision.deform_conv2d.default] = torchvisions
    except ImportError:  # pragma: no cover
        pass
    return table
