"""``install()`` for HF transformers: its multi-scale deformable attention on our CPU kernel.

Every transformers model with deformable attention defines a ``MultiScaleDeformableAttention``
module in its ``modeling_*`` file (one class per model, the same forward signature), or calls a
module-level ``multi_scale_deformable_attention`` function (Mask2Former, OneFormer). Both are
replaced in the modules already imported, and, through an import hook, in those imported later.
A replaced forward runs our op on CPU tensors of a supported dtype and the original otherwise.
"""
import importlib.abc
import sys

import torch

from .msda import ms_deform_attn, multi_scale_deformable_attn_pytorch

_CLASS = "MultiScaleDeformableAttention"
_FUNCTION = "multi_scale_deformable_attention"
_MARK = "_deform_conv_original"


def _ours(*tensors) -> bool:
    """Whether our kernel takes these tensors: all on the CPU, one supported dtype."""
    dt = tensors[0].dtype
    return (dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
            and all(isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dtype == dt for t in tensors))


def _forward(original):
    def forward(self, value, value_spatial_shapes, value_spatial_shapes_list, level_start_index,
                sampling_locations, attention_weights, im2col_step):
        if _ours(value, sampling_locations, attention_weights):
            return ms_deform_attn(value, value_spatial_shapes_list, level_start_index, sampling_locations,
                                  attention_weights, im2col_step)
        return original(self, value, value_spatial_shapes, value_spatial_shapes_list, level_start_index,
                        sampling_locations, attention_weights, im2col_step)
    setattr(forward, _MARK, original)
    return forward


def _function(original):
    def multi_scale_deformable_attention(value, value_spatial_shapes, sampling_locations, attention_weights):
        if _ours(value, sampling_locations, attention_weights):
            return multi_scale_deformable_attn_pytorch(value, value_spatial_shapes, sampling_locations,
                                                       attention_weights)
        return original(value, value_spatial_shapes, sampling_locations, attention_weights)
    setattr(multi_scale_deformable_attention, _MARK, original)
    return multi_scale_deformable_attention


def _is_modeling(name: str) -> bool:
    return name.startswith("transformers.models.") and ".modeling_" in name


def _patch(module) -> None:
    cls = getattr(module, _CLASS, None)
    if isinstance(cls, type) and issubclass(cls, torch.nn.Module) and not hasattr(cls.forward, _MARK):
        cls.forward = _forward(cls.forward)
    fn = getattr(module, _FUNCTION, None)
    if callable(fn) and not hasattr(fn, _MARK):
        setattr(module, _FUNCTION, _function(fn))


def _unpatch(module) -> None:
    cls = getattr(module, _CLASS, None)
    if isinstance(cls, type) and hasattr(cls.forward, _MARK):
        cls.forward = getattr(cls.forward, _MARK)
    fn = getattr(module, _FUNCTION, None)
    if fn is not None and hasattr(fn, _MARK):
        setattr(module, _FUNCTION, getattr(fn, _MARK))


class _Hook(importlib.abc.MetaPathFinder):
    """Patches a transformers modeling module right after it is executed."""

    def find_spec(self, name, path, target=None):
        if not _is_modeling(name):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)
        loader.exec_module = exec_module
        return spec


def install():
    """Patches what is loaded and hooks what is not; returns the undo (None without transformers)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return None
    hook = _Hook()
    sys.meta_path.insert(0, hook)
    for name, module in list(sys.modules.items()):
        if module is not None and _is_modeling(name):
            _patch(module)

    def undo():
        if hook in sys.meta_path:
            sys.meta_path.remove(hook)
        for name, module in list(sys.modules.items()):
            if module is not None and _is_modeling(name):
                _unpatch(module)
    return undo
