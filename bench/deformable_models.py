"""Whole models with the weightless deformable ops, three variants of each interleaved in one
process: the op on our kernel, on its users' grid_sample fallback, and a floor (the op replaced
by a free op of the same output shape: what the model would cost if the op took no time).

* internimage_t: an InternImage-T-style backbone built here with random weights (stem, four
  stages of [4, 4, 18, 4] blocks of DCNv3 + MLP with channels 64-512 and groups 4-32, channels-last
  LayerNorms), inference at 224x224 and a training step (forward, backward, SGD) at 2x224x224.
* deformable_detr: HF transformers' DeformableDetrModel from a config (ResNet-50 backbone,
  random weights, no downloads), inference on one 512x512 image; our kernel through
  deform_conv.torch.install(), the fallback is transformers' own grid_sample path.

    .venv/bin/python bench/deformable_models.py --repeat 3
"""
import argparse
import pathlib
import statistics
import sys
import time

import torch
from torch import nn

import deform_conv
import deform_conv.torch as dct
import deform_conv.torch.dcnv3_modules as dcn_modules

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "python"))
from grid_sample_dcnv3 import grid_sample_dcnv3  # noqa: E402

OURS = dcn_modules.dcnv3_function


def fallback_core(x, offset, mask, kh, kw, sh, sw, ph, pw, dh, dw, group, gc, scale, step, rc):
    return grid_sample_dcnv3(x, offset, mask, kh, kw, sh, sw, ph, dh, dw, group, gc, scale, bool(rc))


def floor_core(x, offset, mask, *args):
    """The input itself (stride 1, same padding: the output's shape), the offsets and masks joined
    with weight 0 so that a training step still runs the backward of the layers making them."""
    return x + 0 * (offset.sum(-1, keepdim=True) + mask.sum(-1, keepdim=True))


class Block(nn.Module):
    def __init__(self, c, groups):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.dcn = dct.DCNv3(channels=c, group=groups, offset_scale=1.0)
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))

    def forward(self, x):
        x = x + self.dcn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Down(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(cin, cout, 3, 2, 1), nn.LayerNorm(cout)

    def forward(self, x):
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class InternImageT(nn.Module):
    def __init__(self, depths=(4, 4, 18, 4), channels=(64, 128, 256, 512), groups=(4, 8, 16, 32)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels[0] // 2, 3, 2, 1), nn.GELU(),
                                  nn.Conv2d(channels[0] // 2, channels[0], 3, 2, 1))
        stages = []
        for i, (d, c, g) in enumerate(zip(depths, channels, groups)):
            layers = [Down(channels[i - 1], c)] if i else []
            stages.append(nn.Sequential(*layers, *[Block(c, g) for _ in range(d)]))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(channels[-1], 1000)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)
        return self.head(self.stages(x).mean((1, 2)))


def timed(fn, repeat, variants):
    """Median ms of fn() for each variant, interleaved."""
    times = {v: [] for v in variants}
    for _ in range(repeat):
        for name, setup in variants.items():
            setup()
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def report(title, ms):
    floor = ms["floor"]
    print(f"{title}: " + ", ".join(f"{k} {v:.0f} ms ({v / floor:.2f}x floor)" for k, v in ms.items())
          + f"; fallback / ours {ms['fallback'] / ms['ours']:.2f}x")


def internimage(repeat):
    torch.manual_seed(0)
    model = InternImageT()
    core = {"ours": OURS, "fallback": fallback_core, "floor": floor_core}
    variants = {k: (lambda f=f: setattr(dcn_modules, "dcnv3_function", f)) for k, f in core.items()}
    x = torch.randn(1, 3, 224, 224)
    model.eval()
    with torch.no_grad():
        for setup in variants.values():  # warm-up
            setup()
            model(x)
        report("internimage_t inference 1x224x224", timed(lambda: model(x), repeat, variants))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    xb = torch.randn(2, 3, 224, 224)

    def step():
        opt.zero_grad()
        model(xb).square().mean().backward()
        opt.step()
    report("internimage_t training step 2x224x224", timed(step, repeat, variants))
    dcn_modules.dcnv3_function = OURS


def deformable_detr(repeat):
    from transformers import DeformableDetrConfig, DeformableDetrModel, ResNetConfig
    from transformers.models.deformable_detr import modeling_deformable_detr as m
    cfg = DeformableDetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
                               backbone_config=ResNetConfig(out_features=["stage2", "stage3", "stage4"]))
    torch.manual_seed(0)
    model = DeformableDetrModel(cfg).eval()
    original = m.MultiScaleDeformableAttention.forward

    def floor(self, value, shapes, shapes_list, starts, loc, attn, step):
        return value.new_zeros(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3])

    def ours():
        dct.install()

    def fallback():
        dct.uninstall()
        m.MultiScaleDeformableAttention.forward = original

    def floor_variant():
        dct.uninstall()
        m.MultiScaleDeformableAttention.forward = floor

    variants = {"ours": ours, "fallback": fallback, "floor": floor_variant}
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        for setup in variants.values():
            setup()
            model(pixel_values=x)
        ms = timed(lambda: model(pixel_values=x), repeat, variants)
    fallback()
    report("deformable_detr inference 1x512x512", ms)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="internimage_t,deformable_detr")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    models = a.models.split(",")
    if "internimage_t" in models:
        internimage(a.repeat)
    if "deformable_detr" in models:
        deformable_detr(a.repeat)
    print(f"({a.threads} threads, isa {deform_conv.active_isa()}, torch {torch.__version__}, median of {a.repeat})")


if __name__ == "__main__":
    main()
