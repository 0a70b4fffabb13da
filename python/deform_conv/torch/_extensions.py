"""``install()`` for InternImage and DCNv4: the compiled extensions their code imports (``import
DCNv3``; ``from DCNv4 import ext``), which cannot be built without CUDA and have no CPU kernel,
served by our op under the same function names and argument orders.

A tensor that is not on the CPU goes to the real extension when one is installed (found by its
import spec, loaded on first use), so a CUDA machine keeps its kernels.
"""
import importlib.machinery
import importlib.util
import sys
import types

from .dcnv3 import _ints, _run, _run_backward, _scale

_NAMES = ("DCNv3", "DCNv4.ext")


def _real(name):
    """The installed extension `name` (not ours), loaded on first use; None when there is none."""
    try:
        if "." in name:
            pkg, mod = name.split(".")
            spec = importlib.util.find_spec(pkg)
            locations = spec.submodule_search_locations if spec else None
            spec = importlib.machinery.PathFinder.find_spec(mod, locations) if locations else None
        else:
            spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shim(name, functions):
    module = types.ModuleType(name, f"deform_conv's CPU kernels under {name}'s function names")
    real = []

    def on_device(fn_name, tensor, args):
        if not real:
            real.append(_real(name))
        if real[0] is None:
            raise RuntimeError(f"{name}.{fn_name}: deform_conv serves CPU tensors; this one is on {tensor.device} "
                               f"and no compiled {name} is installed")
        return getattr(real[0], fn_name)(*args)

    for fn_name, fn in functions.items():
        def call(*args, _fn=fn, _name=fn_name):
            if args[0].device.type != "cpu":
                return on_device(_name, args[0], args)
            return _fn(*args)
        call.__name__ = fn_name
        setattr(module, fn_name, call)

    def __getattr__(attr):
        raise AttributeError(f"{name}.{attr}: not served by deform_conv (it serves {', '.join(functions)})")
    module.__getattr__ = __getattr__
    return module


def _attrs(kh, kw, sh, sw, ph, pw, dh, dw, group, group_channels, offset_scale, remove_center):
    return _ints(kh, kw, sh, sw, ph, pw, dh, dw, group, group_channels), _scale(offset_scale), bool(remove_center)


def dcnv3_forward(input, offset, mask, kh, kw, sh, sw, ph, pw, dh, dw, group, group_channels, offset_scale,
                  im2col_step, remove_center):
    ints, scale, rc = _attrs(kh, kw, sh, sw, ph, pw, dh, dw, group, group_channels, offset_scale, remove_center)
    return _run(input, offset, mask, ints, scale, rc)


def dcnv3_backward(input, offset, mask, kh, kw, sh, sw, ph, pw, dh, dw, group, group_channels, offset_scale,
                   grad_output, im2col_step, remove_center):
    ints, scale, rc = _attrs(kh, kw, sh, sw, ph, pw, dh, dw, group, group_channels, offset_scale, remove_center)
    return list(_run_backward(grad_output.contiguous(), input, offset, mask, ints, scale, rc))


def _no_softmax(softmax):
    if softmax:
        raise NotImplementedError("DCNv4.ext: softmax=True (a softmax inside the op) is not served by deform_conv; "
                                  "DCNv4Function passes False")


def dcnv4_forward(input, offset_mask, kh, kw, sh, sw, ph, pw, dh, dw, group, group_channels, offset_scale,
                  im2col_step, remove_center, d_stride=8, block_thread=0, softmax=False):
    _no_softmax(softmax)
    ints, scale, rc = _attrs(kh, kw, sh, sw, ph, pw, dh, dw, group, group_channels, offset_scale, remove_center)
    return _run(input, offset_mask, None, ints, scale, rc)


def dcnv4_backward(input, offset_mask, kh, kw, sh, sw, ph, pw, dh, dw, group, group_channels, offset_scale,
                   im2col_step, grad_output, remove_center, d_stride=2, block_thread=0, softmax=False):
    _no_softmax(softmax)
    ints, scale, rc = _attrs(kh, kw, sh, sw, ph, pw, dh, dw, group, group_channels, offset_scale, remove_center)
    gi, gom, _ = _run_backward(grad_output.contiguous(), input, offset_mask, None, ints, scale, rc)
    return [gi, gom]


def install():
    """Registers the two extension modules; returns the undo."""
    saved = {name: sys.modules.get(name) for name in _NAMES}
    sys.modules["DCNv3"] = _shim("DCNv3", {"dcnv3_forward": dcnv3_forward, "dcnv3_backward": dcnv3_backward})
    sys.modules["DCNv4.ext"] = _shim("DCNv4.ext", {"dcnv4_forward": dcnv4_forward,
                                                    "dcnv4_backward": dcnv4_backward})

    def undo():
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return undo
