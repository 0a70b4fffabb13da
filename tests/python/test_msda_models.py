"""Multi-scale deformable attention where its users meet it: mmcv's ``MultiScaleDeformableAttention``
module, and HF transformers' models after ``deform_conv.torch.install()`` (which kernel ran is
read from the profiler, not assumed)."""
import importlib
import sys

import numpy as np
import pytest
import torch

import deform_conv.mmcv as dmm
import deform_conv.torch as dct
from test_msda import grid_sample_msda

transformers = pytest.importorskip("transformers")

rng = np.random.default_rng()


def ops_run(fn):
    """The torch ops `fn()` ran, by name, and its result."""
    with torch.profiler.profile() as prof:
        out = fn()
    return {e.key for e in prof.key_averages()}, out


# ------------------------------------------------------------------ mmcv's module


def mmcv_reference(attn, query, value, ref, shapes, starts):
    """mmcv's forward, written from its definition with the grid_sample core (batch_first=False)."""
    q, v = query.permute(1, 0, 2), value.permute(1, 0, 2)
    bs, nq, _ = q.shape
    v = attn.value_proj(v).view(bs, v.shape[1], attn.num_heads, -1)
    h, lv, pt = attn.num_heads, attn.num_levels, attn.num_points
    off = attn.sampling_offsets(q).view(bs, nq, h, lv, pt, 2)
    w = attn.attention_weights(q).view(bs, nq, h, lv * pt).softmax(-1).view(bs, nq, h, lv, pt)
    norm = torch.stack([shapes[..., 1], shapes[..., 0]], -1)
    loc = ref[:, :, None, :, None, :] + off / norm[None, None, None, :, None, :]
    out = attn.output_proj(grid_sample_msda(v, [tuple(s) for s in shapes.tolist()], loc, w))
    return out.permute(1, 0, 2) + query


def test_mmcv_module_matches_its_definition_and_keeps_its_keys():
    torch.manual_seed(int(rng.integers(1 << 30)))
    attn = dmm.MultiScaleDeformableAttention(embed_dims=24, num_heads=3, num_levels=2, num_points=3,
                                             dropout=0.0).double()
    assert sorted(attn.state_dict()) == sorted(
        f"{m}.{p}" for m in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
        for p in ("weight", "bias"))
    # mmcv's initialisation: zero offsets around a fan of points, zero attention logits.
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    bias = attn.sampling_offsets.bias.view(3, 2, 3, 2)
    assert torch.allclose(bias[0, 0, :, 0], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    for p in attn.parameters():  # random weights, so that every path is exercised
        torch.nn.init.normal_(p, std=0.2)
    shapes = torch.tensor([[5, 6], [2, 3]])
    starts = torch.tensor([0, 30])
    nq, bs, s = 11, 2, 36
    query = torch.randn(nq, bs, 24, dtype=torch.float64)
    value = torch.randn(s, bs, 24, dtype=torch.float64)
    ref = torch.rand(bs, nq, 2, 2, dtype=torch.float64) * 1.2 - 0.1
    got = attn(query, value=value, reference_points=ref, spatial_shapes=shapes, level_start_index=starts)
    want = mmcv_reference(attn, query, value, ref, shapes, starts)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # batch_first takes and returns [bs, n, embed]; the same numbers.
    attn.batch_first = True
    got_bf = attn(query.transpose(0, 1), value=value.transpose(0, 1), reference_points=ref,
                  spatial_shapes=shapes, level_start_index=starts)
    torch.testing.assert_close(got_bf.transpose(0, 1), want, rtol=1e-10, atol=1e-10)
    names, _ = ops_run(lambda: attn(query.transpose(0, 1), value=value.transpose(0, 1), reference_points=ref,
                                    spatial_shapes=shapes, level_start_index=starts))
    assert "deform_conv::ms_deform_attn" in names and "aten::grid_sampler_2d" not in names
    with pytest.raises(dct.DeformConvError, match="spatial_shapes"):
        attn(query.transpose(0, 1), value=value.transpose(0, 1)[:, :-1], reference_points=ref,
             spatial_shapes=shapes, level_start_index=starts)


# ------------------------------------------------------------------ HF transformers


def tiny_detr():
    from transformers import DeformableDetrConfig, DeformableDetrModel, ResNetConfig
    cfg = DeformableDetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
        backbone_config=ResNetConfig(out_features=["stage2", "stage3", "stage4"], embedding_size=8,
                                     hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1]),
        d_model=32, encoder_layers=1, decoder_layers=1, num_queries=12, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_n_points=3, decoder_n_points=3)
    torch.manual_seed(int(rng.integers(1 << 30)))
    return DeformableDetrModel(cfg).eval()


def test_install_runs_transformers_models_built_before_it_on_our_kernel():
    dct.uninstall()
    model = tiny_detr().double()
    x = torch.rand(1, 3, 64, 96, dtype=torch.float64)
    names, want = ops_run(lambda: model(pixel_values=x).last_hidden_state)
    assert "aten::grid_sampler_2d" in names and "deform_conv::ms_deform_attn" not in names
    dct.install()
    try:
        names, got = ops_run(lambda: model(pixel_values=x).last_hidden_state)
        assert "deform_conv::ms_deform_attn" in names and "aten::grid_sampler_2d" not in names
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
        # Training goes through our backward: the gradients equal transformers' own path.
        got.sum().backward()
        ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    finally:
        dct.uninstall()
    model.zero_grad()
    model(pixel_values=x).last_hidden_state.sum().backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(ours[n], p.grad, rtol=1e-8, atol=1e-9, msg=n)
    names, _ = ops_run(lambda: model(pixel_values=x).last_hidden_state)
    assert "aten::grid_sampler_2d" in names and "deform_conv::ms_deform_attn" not in names


def test_install_patches_transformers_modules_imported_after_it():
    name = "transformers.models.grounding_dino.modeling_grounding_dino"
    sys.modules.pop(name, None)
    dct.install()
    try:
        module = importlib.import_module(name)
        assert hasattr(module.MultiScaleDeformableAttention.forward, "_deform_conv_original")
    finally:
        dct.uninstall()
    assert not hasattr(module.MultiScaleDeformableAttention.forward, "_deform_conv_original")


def test_float32_model_agrees_with_transformers_own_path():
    model = tiny_detr()
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        want = model(pixel_values=x).last_hidden_state
        dct.install()
        try:
            got = model(pixel_values=x).last_hidden_state
        finally:
            dct.uninstall()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_onnx_export_emits_mmdeploys_node():
    """TorchScript export: the attention becomes mmdeploy::MMCVMultiScaleDeformableAttention with the
    levels as int64 constants (crates/deform-conv-tract runs it: tests/onnx_models.rs)."""
    import io
    import warnings
    onnx = pytest.importorskip("onnx")
    value, loc, attn = (torch.randn(1, 26, 2, 4), torch.rand(1, 5, 2, 2, 3, 2), torch.rand(1, 5, 2, 2, 3))

    class Block(torch.nn.Module):
        def forward(self, v, l, a):
            return dct.ms_deform_attn(v, [(4, 5), (2, 3)], [0, 20], l, a)

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Block(), (value, loc, attn), f, opset_version=17, dynamo=False)
    model = onnx.load_from_string(f.getvalue())
    (node,) = [n for n in model.graph.node if n.op_type == "MMCVMultiScaleDeformableAttention"]
    assert node.domain == "mmdeploy"
    consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
              if n.op_type == "Constant"}
    assert consts[node.input[1]].tolist() == [[4, 5], [2, 3]] and consts[node.input[2]].tolist() == [0, 20]


def test_install_serves_mask2formers_attention_function():
    """Mask2Former (and OneFormer) call a module-level multi_scale_deformable_attention: after
    install() it runs our kernel, with transformers' own results."""
    m2f = importlib.import_module("transformers.models.mask2former.modeling_mask2former")
    shapes = [(5, 6), (3, 2), (1, 1)]
    s = sum(h * w for h, w in shapes)
    value = torch.randn(2, s, 3, 8, dtype=torch.float64)
    loc = torch.rand(2, 9, 3, 3, 4, 2, dtype=torch.float64) * 1.2 - 0.1
    attn = torch.rand(2, 9, 3, 3, 4, dtype=torch.float64)
    dct.uninstall()
    names, want = ops_run(lambda: m2f.multi_scale_deformable_attention(value, shapes, loc, attn))
    assert "aten::grid_sampler_2d" in names
    dct.install()
    try:
        names, got = ops_run(lambda: m2f.multi_scale_deformable_attention(value, shapes, loc, attn))
    finally:
        dct.uninstall()
    assert "deform_conv::ms_deform_attn" in names and "aten::grid_sampler_2d" not in names
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
