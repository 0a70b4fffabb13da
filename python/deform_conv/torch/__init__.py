"""torch drop-ins: ``deform_conv2d`` and ``DeformConv2d`` (torchvision), ``npu_deformable_conv2d`` (torch_npu),
``dcnv3_core`` / ``dcnv4`` (InternImage, DCNv4), ``ms_deform_attn`` (Deformable DETR), and ``install()``.

One file per concern: ``dcnv2`` (the DCNv2 ops and module), ``dcnv3``, ``msda``, ``install``
(torchvision's own ops on our kernel), ``onnx_export``, ``_checks`` (argument checks and the fake
kernels' output sizes), ``_runtime`` (torch's threads, errors, tensors to the core and back).

The ops are ``torch.library.custom_op``s with registered autograd formulas and fake kernels, so
they work under ``torch.compile(fullgraph=True)``, export, TorchScript, torch function and dispatch
modes and the profiler. A plain eager call (none of those active, plain tensors) skips the
dispatcher's Python layers and runs the same forward and gradient bodies directly, through an
``autograd.Function`` when a gradient is wanted: the same bits, ~0.3 ms less per call when
another op has just flushed the caches. CPU tensors of float16, bfloat16, float32 and float64
come back in the same dtype (half types are sampled and accumulated in float32).

**Threads.** Inside a torch program the engine runs on torch's own intra-op threads: on import,
this module finds the OpenMP runtime torch loaded (``GOMP_parallel`` in its libgomp) and every op
runs its tasks there, the calling thread taking part, with ``torch.get_num_threads()`` workers.
Nothing of ours spins against torch's next op and nothing of torch's against ours. When no such
runtime is found (a torch built without OpenMP), a one-line warning says so and the engine's own
pool is used. Results are bitwise identical either way and for any thread count.

**No hidden copies.** Tensors of any strides (``channels_last``, slices) are read in place;
bfloat16 is passed as its bits (numpy has no bfloat16); outputs are wrapped, not copied.
"""
import torch  # noqa: F401  (fails early, with torch's own message, when torch is missing)

from ._runtime import DeformConvError, DeformConvTypeError, executor, set_executor
from .dcnv2 import DeformConv2d, deform_conv2d, npu_deformable_conv2d
from .install import install, installed, uninstall
from .dcnv3 import dcnv3_core, dcnv3_core_pytorch, dcnv3_function, dcnv4, dcnv4_function
from .msda import ms_deform_attn, multi_scale_deformable_attn_pytorch
from .dcnv3_modules import DCNv3, DCNv3_pytorch, DCNv4
from .onnx_export import onnx_translations  # after the ops it exports

__all__ = ["deform_conv2d", "DeformConv2d", "npu_deformable_conv2d", "install", "uninstall", "installed",
           "onnx_translations", "DeformConvError", "DeformConvTypeError", "executor", "set_executor",
           "dcnv3_core_pytorch", "dcnv3_core", "dcnv3_function", "dcnv4_function", "dcnv4",
           "ms_deform_attn", "multi_scale_deformable_attn_pytorch", "DCNv3", "DCNv3_pytorch", "DCNv4"]
