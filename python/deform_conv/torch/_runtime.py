"""What every torch op shares: where the engine runs (torch's OpenMP threads), the error classes,
and the zero-copy passage of tensors to the core and back."""
import warnings
from typing import Optional

import torch
from torch import Tensor

from .. import _core

def _use_openmp():
    """Registers the OpenMP runtime torch loaded (found by the extension itself); False if none."""
    if "OpenMP" not in torch.__config__.parallel_info().split("ATen parallel backend:")[-1]:
        return False
    return _core.use_openmp(torch.get_num_threads())


if not _use_openmp():
    warnings.warn("deform_conv.torch: torch's OpenMP runtime was not found; the engine runs on its own "
                  "thread pool (deform_conv.set_num_threads), which may contend with torch's threads",
                  RuntimeWarning, stacklevel=2)
_threads = [torch.get_num_threads()]


class _TorchCall:
    """Runs the ``_core`` calls inside it on torch's threads (the registered OpenMP runtime)."""

    def __enter__(self):
        n = torch.get_num_threads()
        if n != _threads[0]:
            _threads[0] = n
            _core.set_host_threads(n)
        self.prev = _core.torch_call(True)

    def __exit__(self, *exc):
        _core.torch_call(self.prev)


def _plain(*tensors) -> bool:
    """Whether an op may run its kernel straight from Python instead of through torch's
    dispatcher: eager mode (no ``torch.compile``, tracing or profiler), no torch function or
    dispatch mode or functorch transform active, and every tensor a plain one (or a Parameter).
    The dispatcher's layers cost ~30 us a call with warm caches and ~0.35 ms after another op
    has flushed them (BENCHMARKS.md); the custom op remains what compile, export, TorchScript
    and the modes see."""
    if (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.autograd._profiler_enabled()
            or torch._C._len_torch_function_stack() or torch._C._len_torch_dispatch_stack()
            or torch._C._are_functorch_transforms_active()):
        return False
    return all(t is None or type(t) is Tensor or type(t) is torch.nn.Parameter for t in tensors)


def _wants_grad(*tensors) -> bool:
    """Whether autograd records an op on these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def executor() -> str:
    """Where the engine runs for torch ops: "openmp" (torch's threads) or "rayon" (its own pool)."""
    return _core.host_executor()


def set_executor(name: str) -> None:
    """Chooses where torch ops run: "openmp" (torch's threads, the default when found) or "rayon"
    (the engine's own pool, sized by ``deform_conv.set_num_threads``). Results are the same bits."""
    _core.set_host_executor(name)


class DeformConvError(RuntimeError, ValueError):
    """A bad shape or parameter: a ``RuntimeError`` as torchvision raises, and a ``ValueError``."""


class DeformConvTypeError(RuntimeError, TypeError):
    """A bad type, dtype or device: a ``RuntimeError`` as torchvision raises, and a ``TypeError``."""


def _fail(msg: str, type_error: bool = False) -> None:
    """Raises `msg` as DeformConvError / DeformConvTypeError (eager) or RuntimeError (TorchScript)."""
    if torch.jit.is_scripting():
        raise RuntimeError(msg)
    else:
        if type_error:
            raise DeformConvTypeError(msg)
        raise DeformConvError(msg)


def _core_call(fn, *args, **kwargs):
    """A ``_core`` call in torch mode, its errors raised as the classes above."""
    try:
        with _TorchCall():
            return fn(*args, **kwargs)
    except TypeError as e:
        raise DeformConvTypeError(str(e)) from None
    except ValueError as e:
        raise DeformConvError(str(e)) from None


def _np(name: str, t: Optional[Tensor]):
    """A numpy view of a CPU tensor, any strides, no copy (bfloat16 as its 16-bit pattern)."""
    if t is None:
        return None
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return _core.Bf16(t.view(torch.uint16).numpy())
    return t.numpy()


def _back(a, dtype) -> Tensor:
    """The result array as a tensor of `dtype`, sharing its memory."""
    t = torch.from_numpy(a)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t
