"""``mindspore.ops.deformable_conv2d`` on numpy arrays, and on MindSpore Tensors as a
differentiable op (packed offsets ``[dx | dy | mask]``).

Given numpy arrays, it returns a numpy array. Given MindSpore Tensors (float16 or float32, CPU),
it runs as a ``mindspore.ops.Custom`` op of ``func_type="pyfunc"`` whose ``bprop`` calls our
backward, so ``mindspore.grad``, ``value_and_grad`` and ``nn.TrainOneStepCell`` train through it,
in PyNative mode and inside ``mindspore.jit`` / GRAPH_MODE on CPU (MindSpore runs ``pyfunc``
Custom ops on the CPU only). The gradient rule is MindSpore CPU's: per tap, no gate at -1.

:class:`DeformConv2d` is a ``nn.Cell`` with the ``ModulatedDeformConv2dPack`` pattern: its own
offset/mask convolution ``conv_offset`` (zero-initialised: it starts as a plain convolution),
``weight`` and ``bias`` as ``Parameter``\\ s.
"""
import math

from . import _core
from ._args import array as _array
from ._args import flag as _flag
from ._args import integer as _integer
from ._args import ints as _ints

__all__ = ["deformable_conv2d", "deformable_conv2d_backward", "custom_op", "set_threads", "DeformConv2d"]


def _is_ms_tensor(x):
    t = type(x)
    return t.__module__.startswith("mindspore") and hasattr(x, "asnumpy")


def deformable_conv2d(x, weight, offsets, kernel_size, strides, padding, bias=None, dilations=(1, 1, 1, 1),
                      groups=1, deformable_groups=1, modulated=True, *, backend="engine"):
    """MindSpore's forward. strides / dilations are (1, 1, h, w); padding (top, bottom, left, right).

    numpy arrays in, a numpy array out; MindSpore Tensors in, a Tensor out (differentiable).
    """
    attrs = (tuple(_ints("kernel_size", kernel_size)), tuple(_ints("strides", strides)),
             tuple(_ints("padding", padding)), tuple(_ints("dilations", dilations)), _integer("groups", groups),
             _integer("deformable_groups", deformable_groups), _flag("modulated", modulated))
    if _is_ms_tensor(x):
        return _ms_call(attrs, backend, x, weight, offsets, bias)
    return _core.mindspore_forward((_array("x", x), _array("weight", weight), _array("offsets", offsets),
                                    _array("bias", bias)), attrs, backend)


def deformable_conv2d_backward(grad_output, x, weight, offsets, kernel_size, strides, padding, bias=None,
                               dilations=(1, 1, 1, 1), groups=1, deformable_groups=1, modulated=True, *,
                               backend="engine"):
    """(grad_x, grad_weight, grad_offsets packed, grad_bias), MindSpore CPU's per-tap rule (numpy)."""
    return _core.mindspore_backward(
        _array("grad_output", grad_output),
        (_array("x", x), _array("weight", weight), _array("offsets", offsets), _array("bias", bias)),
        (_ints("kernel_size", kernel_size), _ints("strides", strides), _ints("padding", padding),
         _ints("dilations", dilations), _integer("groups", groups), _integer("deformable_groups", deformable_groups),
         _flag("modulated", modulated)), backend)


# ------------------------------------------------------------------ MindSpore Tensors: a Custom op

_OPS = {}
_THREADS = ["engine"]


def set_threads(mode: str) -> None:
    """Threads of our op inside MindSpore: "engine" (default), "serial" or "auto".

    MindSpore's runtime threads keep spinning while a Python custom op runs, so the engine's own
    threads fight them. Measured on 2 cores in MindSpore's default asynchronous PyNative mode
    (docs/optimisation-history.md): "serial" (the calling thread alone) halves npu_doc's forward (52 → 23 ms)
    but slows the GEMM-bound layers (resnet_c4 forward 56 → 69 ms), so neither wins everywhere and
    the default stays "engine". With ``ms.set_context(pynative_synchronize=True,
    runtime_num_threads=1)`` nothing spins and "engine" is fastest (npu_doc 13 ms). "auto" picks
    "engine" in that context and "serial" otherwise.
    """
    if mode not in ("auto", "serial", "engine"):
        raise ValueError(f"set_threads: expected 'auto', 'serial' or 'engine', got {mode!r}")
    _THREADS[0] = mode


def _serial() -> bool:
    if _THREADS[0] != "auto":
        return _THREADS[0] == "serial"
    import mindspore as ms
    try:
        quiet = bool(ms.get_context("pynative_synchronize")) and ms.get_context("runtime_num_threads") == 1
    except Exception:  # noqa: BLE001 - an unknown context key: assume the default runtime
        quiet = False
    return not quiet


class _Threads:
    """Our pyfunc's work: on this thread alone unless MindSpore's runtime is quiet (see set_threads)."""

    def __enter__(self):
        self.prev = _core.serial_call(_serial())

    def __exit__(self, *exc):
        _core.serial_call(self.prev)


def _ms_call(attrs, backend, x, weight, offsets, bias):
    from mindspore import Tensor
    for name, t in (("weight", weight), ("offsets", offsets), ("bias", bias)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a mindspore Tensor (as x), got {type(t).__name__}")
    names = ("x", "weight", "offsets", "bias")
    tensors = (x, weight, offsets, bias)
    for name, t in zip(names, tensors):
        if t is None:
            continue
        dt = str(t.dtype)
        if dt not in ("Float32", "Float16"):
            raise TypeError(f"{name}: expected dtype float16 or float32, got {dt}")
        if dt != str(x.dtype):
            raise TypeError(f"{name}: expected dtype {x.dtype} (x's), got {dt}")
    # The same validation as the numpy path, on shapes alone, before MindSpore runs anything:
    # errors are raised here, with our messages, not later inside MindSpore's executor.
    shape = _core.mindspore_output_shape((list(x.shape), list(weight.shape), list(offsets.shape),
                                          None if bias is None else list(bias.shape)), attrs)
    if 0 in shape:
        # An empty result (no image or no output channel): a Custom op cannot return one
        # (MindSpore's executor fails copying it), and there is nothing to compute.
        from mindspore import ops
        return ops.zeros(tuple(shape), x.dtype)
    op = _op(attrs, backend, bias is not None)
    return op(x, weight, offsets, bias) if bias is not None else op(x, weight, offsets)


def _op(attrs, backend, has_bias):
    """The Custom forward op (with its bprop) for these attributes, made once."""
    key = (attrs, backend, has_bias)
    if key in _OPS:
        return _OPS[key]
    from mindspore import ops

    # MindSpore reads the inputs of a pyfunc from its signature: no defaults, no *args.
    def run_forward(x, w, off, b):
        with _Threads():
            return _core.mindspore_forward((x, w, off, b), attrs, backend)

    def run_backward(x, w, off, b, dy):
        with _Threads():
            return _core.mindspore_backward(dy, (x, w, off, b), attrs, backend)

    def shape_of(x, w, off, b):
        return tuple(_core.mindspore_output_shape((list(x), list(w), list(off), None if b is None else list(b)),
                                                  attrs))

    if has_bias:
        def forward(x, w, off, b):
            return run_forward(x, w, off, b)

        def backward(x, w, off, b, dy):
            return run_backward(x, w, off, b, dy)

        def out_shape(x, w, off, b):
            return shape_of(x, w, off, b)

        def out_dtype(x, w, off, b):
            return x

        def grad_shapes(x, w, off, b, dy):
            return (x, w, off, b)

        def grad_dtypes(x, w, off, b, dy):
            return (x, w, off, b)
    else:
        def forward(x, w, off):
            return run_forward(x, w, off, None)

        def backward(x, w, off, dy):
            return run_backward(x, w, off, None, dy)[:3]

        def out_shape(x, w, off):
            return shape_of(x, w, off, None)

        def out_dtype(x, w, off):
            return x

        def grad_shapes(x, w, off, dy):
            return (x, w, off)

        def grad_dtypes(x, w, off, dy):
            return (x, w, off)

    grad_op = ops.Custom(backward, out_shape=grad_shapes, out_dtype=grad_dtypes, func_type="pyfunc")

    if has_bias:
        def bprop(x, w, off, b, out, dout):
            return grad_op(x, w, off, b, dout)
    else:
        def bprop(x, w, off, out, dout):
            return grad_op(x, w, off, dout)

    op = ops.Custom(forward, out_shape=out_shape, out_dtype=out_dtype, func_type="pyfunc", bprop=bprop)
    _OPS[key] = op
    return op


def custom_op(kernel_size, strides, padding, dilations=(1, 1, 1, 1), groups=1, deformable_groups=1,
              modulated=True, has_bias=True, *, backend="engine"):
    """The ``mindspore.ops.Custom`` primitive itself, for ``mindspore.jit`` / GRAPH_MODE code:
    ``op(x, weight, offsets[, bias])``. Shapes are validated when MindSpore infers them."""
    attrs = (tuple(_ints("kernel_size", kernel_size)), tuple(_ints("strides", strides)),
             tuple(_ints("padding", padding)), tuple(_ints("dilations", dilations)), _integer("groups", groups),
             _integer("deformable_groups", deformable_groups), _flag("modulated", modulated))
    return _op(attrs, backend, _flag("has_bias", has_bias))


def _make_cell_class():
    import mindspore as ms
    from mindspore import Parameter, nn, ops
    from mindspore.common.initializer import HeUniform, Uniform, Zero, initializer

    class DeformConv2d(nn.Cell):
        """A modulated deformable convolution Cell (DCN v2) in MindSpore's conventions.

        ``conv_offset`` (an ``nn.Conv2d``, zero-initialised) maps the input to packed offsets
        ``[dx | dy | mask]`` of ``3 * deformable_groups * kh * kw`` channels; the mask block goes
        through a sigmoid; then our deformable convolution with ``weight`` (HeUniform, as
        ``nn.Conv2d``) and ``bias``. ``padding`` is an int or ``(top, bottom, left, right)``.
        """

        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, group=1,
                     deformable_groups=1, has_bias=True):
            super().__init__()
            kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
            sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
            dh, dw = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
            pads = (padding,) * 4 if isinstance(padding, int) else tuple(padding)
            if in_channels % group or out_channels % group:
                raise ValueError(f"group: expected a divisor of in_channels {in_channels} and out_channels "
                                 f"{out_channels}, got {group}")
            self.kernel_size, self.strides, self.padding = (kh, kw), (1, 1, sh, sw), pads
            self.dilations, self.group, self.deformable_groups = (1, 1, dh, dw), group, deformable_groups
            self.split = 2 * deformable_groups * kh * kw
            self.conv_offset = nn.Conv2d(in_channels, 3 * deformable_groups * kh * kw, (kh, kw), (sh, sw),
                                         pad_mode="pad", padding=pads, dilation=(dh, dw), has_bias=True,
                                         weight_init=Zero(), bias_init=Zero())
            self.weight = Parameter(initializer(HeUniform(math.sqrt(5)), (out_channels, in_channels // group, kh, kw),
                                                ms.float32), name="weight")
            bound = 1 / math.sqrt(in_channels // group * kh * kw)
            self.bias = Parameter(initializer(Uniform(bound), (out_channels,), ms.float32),
                                  name="bias") if has_bias else None
            self.has_bias = has_bias
            self.dcn = custom_op(self.kernel_size, self.strides, self.padding, self.dilations, group,
                                 deformable_groups, True, has_bias)
            self.sigmoid = ops.Sigmoid()
            self.concat = ops.Concat(axis=1)

        def construct(self, x):
            om = self.conv_offset(x)
            offsets = self.concat((om[:, :self.split], self.sigmoid(om[:, self.split:])))
            if self.has_bias:
                return self.dcn(x, self.weight, offsets, self.bias)
            return self.dcn(x, self.weight, offsets)

    return DeformConv2d


def __getattr__(name):
    # The Cell class needs mindspore; it is made on first use so that `import deform_conv` does not
    # import mindspore.
    if name == "DeformConv2d":
        cls = _make_cell_class()
        globals()["DeformConv2d"] = cls
        return cls
    raise AttributeError(name)
