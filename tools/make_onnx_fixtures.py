"""ONNX fixtures for crates/deform-conv-tract (committed; rerun to regenerate):

* ONNX's own DeformConv node test cases, from the onnx package's test-case generator
  (onnx.backend.test.case.node): model.onnx and their inputs and expected outputs as .npy.
* mmcv_modulated: one mmcv::MMCVModulatedDeformConv2d node (mmcv's symbolic: inputs input, offset,
  mask, weight, bias; attributes stride, padding, dilation, groups, deform_groups), expected output
  from torchvision.ops.deform_conv2d.
* unsupported_op: a node no one implements (FancyWarp), for the CLI's error.
* dcn_block: a model exported from torch (conv -> offset/mask -> DeformConv -> ReLU, opset 19)
  with an input and onnxruntime's output.
* dcnv3_block, dcnv4_block, msda_block: InternImage's DCNv3 module, DCNv4's module and mmcv's
  MultiScaleDeformableAttention exported from torch (their TRTDCNv3, DCNv4 and
  MMCVMultiScaleDeformableAttention nodes), the expected output from the same modules with the core
  op replaced by the grid_sample formulations of tests/python (the op's upstream definitions).

    .venv/bin/python tools/make_onnx_fixtures.py
"""
import pathlib
import shutil
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.backend.test.case.node import collect_testcases
from torch import nn

import deform_conv.torch as dct

OUT = pathlib.Path(__file__).resolve().parents[1] / "crates" / "deform-conv-tract" / "tests" / "data"


def write_case(name, model, inputs, outputs):
    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    onnx.save(model, d / "model.onnx")
    for i, a in enumerate(inputs):
        np.save(d / f"input_{i}.npy", a)
    for i, a in enumerate(outputs):
        np.save(d / f"output_{i}.npy", a)
    print(f"{name}: {[a.shape for a in inputs]} -> {[a.shape for a in outputs]}")


class DcnBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.off = nn.Conv2d(4, 3 * 2 * 9, 3, padding=1)
        nn.init.normal_(self.off.weight, std=0.3)
        self.dcn = dct.DeformConv2d(4, 6, 3, padding=1)

    def forward(self, x):
        om = self.off(x)
        return torch.relu(self.dcn(x, om[:, :36], torch.sigmoid(om[:, 36:])))


def write_mmcv_case():
    import torchvision
    from onnx import TensorProto, helper
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)  # groups 2
    b = rng.standard_normal(6).astype(np.float32)
    ho, wo = (7 + 2 - 2 * 2 - 1) // 1 + 1, (6 + 2 * 1 - 3) // 2 + 1  # stride (1, 2), padding (1, 1), dilation (2, 1)
    off = (2 * rng.standard_normal((2, 2 * 2 * 9, ho, wo))).astype(np.float32)  # deform_groups 2
    mask = rng.random((2, 2 * 9, ho, wo)).astype(np.float32)
    y = torchvision.ops.deform_conv2d(*(torch.from_numpy(a) for a in (x, off, w, b)), stride=(1, 2), padding=(1, 1),
                                      dilation=(2, 1), mask=torch.from_numpy(mask)).numpy()
    names = ["input", "offset", "mask", "weight", "bias"]
    node = helper.make_node("MMCVModulatedDeformConv2d", names, ["y"], domain="mmcv", stride=[1, 2], padding=[1, 1],
                            dilation=[2, 1], groups=2, deform_groups=2)
    arrays = [x, off, mask, w, b]
    graph = helper.make_graph([node], "mmcv_dcn",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in zip(names, arrays)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y.shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid("mmcv", 1)])
    write_case("mmcv_modulated", model, arrays, [y])


def write_unsupported_case():
    """A model with an operator nobody implements: the CLI must name it."""
    from onnx import TensorProto, helper
    node = helper.make_node("FancyWarp", ["x"], ["y"], domain="example")
    graph = helper.make_graph([node], "unsupported", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid("example", 1)])
    x = np.ones((1, 2), np.float32)
    write_case("unsupported_op", model, [x], [])


def export(name, model, inputs, reference):
    """`model` exported (TorchScript exporter, opset 17) with `inputs`; expected: `reference`."""
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(d / "model.onnx"), opset_version=17, dynamo=False)
        want = reference(*inputs).detach()
        np.testing.assert_allclose(model(*inputs).detach().numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
    write_case(name, onnx.load(d / "model.onnx"), [t.numpy() for t in inputs], [want.numpy()])


def write_point_cases():
    import sys
    import torch.nn.functional as F
    sys.path.insert(0, str(OUT.parents[3] / "tests" / "python"))
    import deform_conv.mmcv as dmm
    from grid_sample_dcnv3 import grid_sample_dcnv3
    from test_msda import grid_sample_msda

    def randomise(m):
        for p in m.parameters():
            nn.init.normal_(p, std=0.3)
        return m.eval()

    torch.manual_seed(1)
    v3 = randomise(dct.DCNv3(channels=12, group=3, kernel_size=3, pad=1))

    def v3_reference(x):
        n, h, w, _ = x.shape
        xp, x1 = v3.input_proj(x), v3.dw_conv(x.permute(0, 3, 1, 2))
        mask = F.softmax(v3.mask(x1).reshape(n, h, w, 3, -1), -1).reshape(n, h, w, -1)
        y = grid_sample_dcnv3(xp, v3.offset(x1), mask, 3, 3, 1, 1, 1, 1, 1, 3, 4, 1.0, False)
        return v3.output_proj(y)
    export("dcnv3_block", v3, (torch.randn(2, 6, 7, 12),), v3_reference)

    v4 = randomise(dct.DCNv4(channels=32, group=2))

    def v4_reference(x):
        v = v4.value_proj(x).reshape(1, 5, 5, -1)
        per = v4.offset_mask(x).reshape(1, 5, 5, -1)[..., :54].reshape(1, 5, 5, 2, 27)
        off, mask = per[..., :18].reshape(1, 5, 5, 36), per[..., 18:].reshape(1, 5, 5, 18)
        return v4.output_proj(grid_sample_dcnv3(v, off, mask, 3, 3, 1, 1, 1, 1, 1, 2, 16, 1.0, False).reshape(1, 25, -1))
    export("dcnv4_block", v4, (torch.randn(1, 25, 32),), v4_reference)

    attn = randomise(dmm.MultiScaleDeformableAttention(embed_dims=16, num_heads=2, num_levels=2, num_points=3,
                                                       batch_first=True, dropout=0.0))
    shapes, starts = torch.tensor([[4, 5], [2, 3]]), torch.tensor([0, 20])

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, query, value, ref):
            return self.attn(query, value=value, reference_points=ref, spatial_shapes=shapes,
                             level_start_index=starts)

    def msda_reference(query, value, ref):
        bs, nq, _ = query.shape
        v = attn.value_proj(value).view(bs, value.shape[1], 2, -1)
        off = attn.sampling_offsets(query).view(bs, nq, 2, 2, 3, 2)
        w = attn.attention_weights(query).view(bs, nq, 2, 6).softmax(-1).view(bs, nq, 2, 2, 3)
        norm = torch.stack([shapes[..., 1], shapes[..., 0]], -1)
        loc = ref[:, :, None, :, None, :] + off / norm[None, None, None, :, None, :]
        return attn.output_proj(grid_sample_msda(v, [(4, 5), (2, 3)], loc, w)) + query
    export("msda_block", Block(), (torch.randn(2, 7, 16), torch.randn(2, 26, 16), torch.rand(2, 7, 2, 2)),
           msda_reference)


def main():
    cases = [c for c in collect_testcases() if "deform" in c.name]
    assert cases, "the onnx package has no DeformConv test cases"
    for case in cases:
        for k, (inputs, outputs) in enumerate(case.data_sets):
            write_case(case.name + ("" if k == 0 else f"_{k}"), case.model, inputs, outputs)
    write_mmcv_case()
    write_unsupported_case()
    write_point_cases()
    torch.manual_seed(0)
    model = DcnBlock().eval()
    x = torch.randn(2, 4, 9, 8)
    d = OUT / "dcn_block"
    d.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(d / "model.onnx"), opset_version=19, dynamo=False,
                          input_names=["x"], output_names=["y"])
    sess = ort.InferenceSession(str(d / "model.onnx"))
    y = sess.run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(y, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    write_case("dcn_block", onnx.load(d / "model.onnx"), [x.numpy()], [y])


if __name__ == "__main__":
    main()
