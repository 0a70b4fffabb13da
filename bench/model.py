"""Whole models, where users meet the op: a plain-conv model, the same model with DCNv2 through
deform_conv.torch, and through torchvision, side by side in one process, default environment.

* resnet50_dcn: torchvision's ResNet-50 with every 3x3 conv of stages c3-c5 (13 bottlenecks)
  replaced by an offset/mask conv + modulated deformable conv (mmdet's
  ``stage_with_dcn=(False, True, True, True)``); the plain model keeps the 3x3 convs.
* edvr_align: an EDVR/BasicVSR-style alignment stack on 64-channel features: per layer, two
  offset convs on [feature, reference], an offset/mask conv and a deformable conv with 8
  deformable groups; the plain model is the same stack with each deformable conv replaced by a
  plain 3x3 conv of the same shape, its offset branch still computed forward and backward (its
  output joins the loss with weight 0), so that the difference is the deformable conv alone.

For ResNet, ``floor`` is the DCN model with a plain conv where the deformable conv was (the
offset/mask convs still run, their output joining with weight 0): what the model would cost with
a deformable conv exactly as fast as torch's plain conv2d.

Inference (no grad) and one training step (forward, backward, SGD), --repeat rounds. The variants
are interleaved: each round runs every variant once, so a slow phase of a noisy machine (minutes
long on a shared 2-core VM) meets all of them alike. Times are medians over the rounds; ratios are
medians of the per-round ratios. All three models share weights. ``ours (own pool)`` runs our op on the engine's rayon pool instead of
torch's OpenMP threads: the thread contention this benchmark exists to show.

    .venv/bin/python bench/model.py [--repeat 5] [--models resnet50_dcn,edvr_align] [--json out.json]
"""
import argparse
import copy
import json
import pathlib
import sys
import time

import torch
import torchvision
from torch import nn

import deform_conv.torch as dct


class DCNv2(nn.Module):
    """offset/mask conv + modulated deformable conv; `op` is the deform_conv2d to call."""

    def __init__(self, conv: nn.Conv2d, op, dg=1, offset_in=None):
        super().__init__()
        k = conv.kernel_size[0] * conv.kernel_size[1]
        self.conv, self.op, self.dg = conv, op, dg
        self.offset = nn.Conv2d(offset_in or conv.in_channels, 3 * dg * k, conv.kernel_size, conv.stride,
                                conv.padding, conv.dilation)
        # Small random offsets: fractional positions, as in a trained model (zeros would make
        # every sample an integer pixel).
        nn.init.normal_(self.offset.weight, std=0.01)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x, feat=None):
        om = self.offset(x if feat is None else feat)
        n = om.shape[1] // 3
        offset, mask = om[:, :2 * n], torch.sigmoid(om[:, 2 * n:])
        return self.op(x, offset, self.conv.weight, self.conv.bias, self.conv.stride, self.conv.padding,
                       self.conv.dilation, mask)


class OffsetsThenConv(DCNv2):
    """The floor of any DCN op: the offset/mask conv runs (its output joins with weight 0, so a
    training step runs its backward too), then a plain conv where the deformable conv was."""

    def forward(self, x, feat=None):
        om = self.offset(x if feat is None else feat)
        return self.conv(x) + 0.0 * om.mean()


def resnet50_dcn(op):
    m = torchvision.models.resnet50(weights=None)
    if op is None:
        return m
    for layer in (m.layer2, m.layer3, m.layer4):
        for block in layer:
            block.conv2 = OffsetsThenConv(block.conv2, None) if op == "floor" else DCNv2(block.conv2, op)
    return m


class EdvrAlign(nn.Module):
    def __init__(self, op, layers=4, c=64, dg=8):
        super().__init__()
        self.op = op
        self.off1 = nn.ModuleList(nn.Conv2d(2 * c, c, 3, 1, 1) for _ in range(layers))
        self.off2 = nn.ModuleList(nn.Conv2d(c, c, 3, 1, 1) for _ in range(layers))
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3, 1, 1) for _ in range(layers))
        self.dcn = nn.ModuleList(DCNv2(conv, op or torchvision.ops.deform_conv2d, dg, offset_in=c)
                                 for conv in self.convs)
        self.plain = op is None
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        feat, ref = x[:, :64], x[:, 64:]
        for i, conv in enumerate(self.convs):
            o = self.act(self.off2[i](self.act(self.off1[i](torch.cat([feat, ref], 1)))))
            if self.plain:
                # The offset/mask conv is computed and joins the loss with weight 0, so that a
                # training step runs the offset branch's backward as the DCN models do (unused, it
                # would get no gradient and off1/off2/offset would skip their backward).
                om = self.dcn[i].offset(o)
                feat = self.act(conv(feat)) + 0.0 * om.mean()
            else:
                feat = self.act(self.dcn[i](feat, o))
        return feat


MODELS = {
    # name: (builder, inference input, training input)
    "resnet50_dcn": (resnet50_dcn, (1, 3, 512, 512), (2, 3, 256, 256)),
    "edvr_align": (EdvrAlign, (1, 128, 128, 128), (2, 128, 96, 96)),
}


FLOOR = "floor: offset convs + plain conv"


def variants(name):
    build = MODELS[name][0]
    torch.manual_seed(0)
    ours = build(dct.deform_conv2d)
    tv = build(torchvision.ops.deform_conv2d)
    tv.load_state_dict(ours.state_dict())
    plain = build(None)
    plain.load_state_dict({k: v for k, v in ours.state_dict().items() if k in plain.state_dict()}, strict=False)
    out = {"plain conv": plain}
    if name == "resnet50_dcn":
        # The plain model lacks the 13 offset/mask convs; this one has them and no DCN op.
        floor = build("floor")
        floor.load_state_dict(ours.state_dict())
        out[FLOOR] = floor
    return out | {"ours": ours, "ours (own pool)": ours, "torchvision": tv}


def run(name, repeat):
    """{label: (inference ms, training ms)} and {label: (inference / plain, training / plain)},
    the variants interleaved round by round."""
    _, inf_shape, train_shape = MODELS[name]
    torch.manual_seed(1)
    xi, xt = torch.randn(inf_shape), torch.randn(train_shape)
    runs = {}
    for label, model in variants(name).items():
        model = copy.deepcopy(model)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)
        executor = "rayon" if label == "ours (own pool)" else "openmp"

        def infer(model=model, executor=executor):
            dct.set_executor(executor)
            model.eval()
            with torch.no_grad():
                model(xi)

        def step(model=model, opt=opt, executor=executor):
            dct.set_executor(executor)
            model.train()
            opt.zero_grad(set_to_none=True)
            model(xt).float().square().mean().backward()
            opt.step()
        infer()
        step()
        runs[label] = (infer, step)
    times = {label: ([], []) for label in runs}
    for r in range(repeat):
        for label, fns in runs.items():
            for fn, ts in zip(fns, times[label]):
                t = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t) * 1e3)
        print(f"  {name}: round {r + 1} of {repeat}", file=sys.stderr)
    dct.set_executor("openmp")

    def median(v):
        return sorted(v)[len(v) // 2]
    rows = {label: tuple(median(ts) for ts in t) for label, t in times.items()}
    base = times["plain conv"]
    ratios = {label: tuple(median([a / b for a, b in zip(ts, bs)]) for ts, bs in zip(t, base))
              for label, t in times.items()}
    def tv_over(label):
        return tuple(median([a / b for a, b in zip(ts, os)])
                     for ts, os in zip(times["torchvision"], times[label]))
    tv_floor = tv_over(FLOOR) if FLOOR in times else None
    return rows, ratios, tv_over("ours"), tv_floor


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, "
          f"deform_conv executor under torch: {dct.executor()}; {a.repeat} interleaved rounds")
    out = {}
    for name in a.models.split(","):
        rows, ratios, tv_ours, tv_floor = run(name, a.repeat)
        out[name] = {"ms": rows, "per_plain": ratios, "torchvision_per_ours": tv_ours,
                     "torchvision_per_floor": tv_floor}
        print(f"\n{name}: inference {MODELS[name][1]}, training step {MODELS[name][2]}")
        print("| model | inference ms | / plain | training step ms | / plain |")
        print("|---|---:|---:|---:|---:|")
        for label, (inf, tr) in rows.items():
            ri, rt = ratios[label]
            print(f"| {label} | {inf:.0f} | {ri:.2f} | {tr:.0f} | {rt:.2f} |")
        print(f"torchvision / ours: inference {tv_ours[0]:.1f}x, training step {tv_ours[1]:.1f}x")
        if tv_floor:
            print(f"torchvision / floor: inference {tv_floor[0]:.2f}x, training step {tv_floor[1]:.2f}x "
                  "(the most a DCN op running at plain conv2d's speed could show here)")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
