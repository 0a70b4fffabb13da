"""``install()``: torchvision's own deformable convolution ops run on this package's CPU kernel."""
import warnings

import torch

from .. import _core
from ._checks import _check_tensors
from ._runtime import _back, _core_call, _fail, _np

_installed: list = []


def _tv_groups(input, weight, offset, groups, offset_groups) -> None:
    """The group counts torchvision's op receives explicitly must agree with the shapes, as its own
    kernel checks them (the core derives them from the shapes)."""
    for name, v in (("groups (n_weight_grps)", groups), ("offset_groups (n_offset_grps)", offset_groups)):
        if v < 1:
            _fail(f"{name}: expected a positive integer, got {v}")
    if weight.shape[1] * groups != input.shape[1]:
        _fail(f"groups (n_weight_grps): expected input channels {input.shape[1]} = weight.shape[1] "
              f"{weight.shape[1]} * groups, got groups = {groups}")
    taps2 = 2 * weight.shape[2] * weight.shape[3]
    if offset.shape[1] != offset_groups * taps2:
        _fail(f"offset_groups (n_offset_grps): expected offset channels {offset.shape[1]} = 2 * kh * kw "
              f"{taps2} * offset_groups, got offset_groups = {offset_groups}")


def _tv_forward(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                offset_groups, use_mask):
    _check_tensors(input, offset, weight, bias, mask if use_mask else None)
    _tv_groups(input, weight, offset, groups, offset_groups)
    y = _core_call(_core.torchvision_forward,
                   (_np("input", input), _np("offset", offset), _np("weight", weight), _np("bias", bias),
                    _np("mask", mask) if use_mask else None), ([stride_h, stride_w], [pad_h, pad_w], [dil_h, dil_w]))
    return _back(y, input.dtype)


def _tv_backward(grad, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                 offset_groups, use_mask):
    _tv_groups(input, weight, offset, groups, offset_groups)
    gi, go, gm, gw, gb = _core_call(
        _core.torchvision_backward, _np("grad_output", grad.contiguous()),
        (_np("input", input), _np("offset", offset), _np("weight", weight), _np("bias", bias),
         _np("mask", mask) if use_mask else None), ([stride_h, stride_w], [pad_h, pad_w], [dil_h, dil_w]))
    dt = input.dtype
    gm = _back(gm, dt) if gm is not None else torch.zeros_like(mask)
    return _back(gi, dt), _back(gw, dt), _back(go, dt), gm, _back(gb, dt)


def _install_torchvision():
    """Our forward and backward as the CPU kernels of torchvision's own ops; returns the undo."""
    try:
        import torchvision  # noqa: F401  (registers the torchvision ops)
    except ImportError:
        return None
    lib = torch.library.Library("torchvision", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel": that is the point
        lib.impl("deform_conv2d", _tv_forward, "CPU")
        lib.impl("_deform_conv2d_backward", _tv_backward, "CPU")
    return lib._destroy


def install() -> None:
    """Runs the deformable ops of existing models on this package's CPU kernels, for the whole
    process, models already built included:

    * torchvision: ``torchvision.ops.deform_conv2d``, ``DeformConv2d``,
      ``torch.ops.torchvision.deform_conv2d`` (also models already scripted). Our forward and
      backward become the CPU kernels of ``torchvision::deform_conv2d`` and
      ``torchvision::_deform_conv2d_backward``; torchvision's autograd, checks and other devices
      stay its own.
    * HF transformers: every ``MultiScaleDeformableAttention`` (Deformable DETR, Grounding DINO,
      RT-DETR, ...) and Mask2Former's / OneFormer's ``multi_scale_deformable_attention``, on CPU
      tensors; other devices keep transformers' own path. Modules imported later are patched when
      they are imported.
    * InternImage and DCNv4: ``import DCNv3`` and ``from DCNv4 import ext`` (their compiled
      extensions, which need CUDA to build) resolve to our op under the same function names and
      argument orders, so their unmodified code runs on a CPU.

    Idempotent; :func:`uninstall` restores everything.
    """
    if _installed:
        return
    from . import _extensions, _transformers
    for undo in (_install_torchvision(), _transformers.install(), _extensions.install()):
        if undo is not None:
            _installed.append(undo)
    if not _installed:
        _installed.append(lambda: None)


def uninstall() -> None:
    """Restores the peers' own kernels (undoes :func:`install`)."""
    while _installed:
        _installed.pop()()


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return bool(_installed)
