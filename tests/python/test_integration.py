"""install()/uninstall(), ONNX export through both exporters (checked with onnxruntime), and
DistributedDataParallel training on loopback."""
import os
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

import deform_conv.torch as dct


def test_install_swaps_torchvisions_kernel_everywhere_and_uninstall_restores_it(monkeypatch):
    from deform_conv import _core
    ran = []
    for name in ("torchvision_forward", "torchvision_backward"):
        real = getattr(_core, name)
        monkeypatch.setattr(_core, name, lambda *a, _real=real, _name=name, **k: ran.append(_name) or _real(*a, **k))
    torch.manual_seed(0)
    x, off, w = torch.rand(1, 2, 5, 5), torch.randn(1, 18, 5, 5), torch.rand(3, 2, 3, 3)
    layer = torchvision.ops.DeformConv2d(2, 3, 3, padding=1)
    layer.weight.data.copy_(w)
    scripted = torch.jit.script(torchvision.ops.DeformConv2d(2, 3, 3, padding=1))  # scripted before install
    scripted.weight.data.copy_(w)
    scripted.bias.data.copy_(layer.bias.data)
    calls = {
        "function": lambda: torchvision.ops.deform_conv2d(x, off, w, layer.bias, padding=1),
        "module built before": lambda: layer(x, off),
        "module scripted before": lambda: scripted(x, off),
        "torch.ops": lambda: torch.ops.torchvision.deform_conv2d(x, w, off, torch.zeros(1, 1), layer.bias, 1, 1, 1,
                                                                 1, 1, 1, 1, 1, False),
    }
    assert not dct.installed()
    before = {name: c().detach() for name, c in calls.items()}
    assert not ran, "torchvision's kernel is replaced before install()"
    dct.install()
    dct.install()  # idempotent
    try:
        for name, c in calls.items():
            ran.clear()
            y = c()
            assert ran == ["torchvision_forward"], name
            torch.testing.assert_close(y, before[name], rtol=1e-5, atol=1e-5, msg=name)
        # Bit for bit the drop-in; the backward runs ours too (autograd stays torchvision's).
        xs = x.clone().requires_grad_()
        y = torchvision.ops.deform_conv2d(xs, off, w, padding=1)
        assert torch.equal(y, dct.deform_conv2d(x, off, w, padding=1))
        ran.clear()
        y.sum().backward()
        assert ran == ["torchvision_backward"] and torch.isfinite(xs.grad).all()
    finally:
        dct.uninstall()
    assert not dct.installed()
    ran.clear()
    for c in calls.values():
        c()
    assert not ran, "uninstall() did not restore torchvision's kernel"


class DcnBlock(nn.Module):
    """conv -> offset/mask -> DeformConv -> ReLU, with ``op`` the deform_conv2d to call."""

    def __init__(self, op, c=4, cout=6, dg=2):
        super().__init__()
        self.op, self.dg = op, dg
        self.off = nn.Conv2d(c, 3 * dg * 9, 3, padding=1)
        nn.init.normal_(self.off.weight, std=0.3)
        self.weight = nn.Parameter(torch.randn(cout, c, 3, 3) * 0.2)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)

    def forward(self, x):
        om = self.off(x)
        n = 2 * self.dg * 9
        return torch.relu(self.op(x, om[:, :n], self.weight, self.bias, (1, 1), (1, 1), (1, 1),
                                  torch.sigmoid(om[:, n:])))


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("which", ["ours", "torchvision installed"])
def test_onnx_export_to_the_standard_node_runs_in_onnxruntime(tmp_path, dynamo, which):
    torch.manual_seed(0)
    op = dct.deform_conv2d if which == "ours" else torchvision.ops.deform_conv2d
    model = DcnBlock(op).eval()
    x = torch.randn(2, 4, 9, 8)
    if which != "ours":
        dct.install()
    try:
        want = model(x).detach().numpy()
        path = str(tmp_path / "dcn.onnx")
        kw = dict(opset_version=19, dynamo=dynamo)
        if dynamo:
            kw.update(custom_translation_table=dct.onnx_translations(), external_data=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), path, **kw)
    finally:
        dct.uninstall()
    import onnx
    nodes = [n.op_type for n in onnx.load(path).graph.node]
    assert "DeformConv" in nodes, nodes
    sess = ort.InferenceSession(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _ddp_worker(rank, world, port, steps, batch, result_path):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(DcnBlock(dct.deform_conv2d).double())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, target = batch
    share = x.shape[0] // world
    for _ in range(steps):
        opt.zero_grad()
        out = model(x[rank * share:(rank + 1) * share])
        loss = ((out - target[rank * share:(rank + 1) * share]) ** 2).mean()
        loss.backward()  # DDP averages the gradients over the processes
        opt.step()
    if rank == 0:
        torch.save({k: v.detach() for k, v in model.module.state_dict().items()}, result_path)
    dist.destroy_process_group()


def test_ddp_on_two_processes_matches_one_process_on_the_full_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp
    torch.manual_seed(1)
    batch = (torch.randn(4, 4, 7, 7, dtype=torch.float64), torch.randn(4, 6, 7, 7, dtype=torch.float64))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, port, 3, batch, path), nprocs=2, join=True)
    ddp = torch.load(path)
    torch.manual_seed(0)
    model = DcnBlock(dct.deform_conv2d).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, target = batch
    for _ in range(3):
        opt.zero_grad()
        ((model(x) - target) ** 2).mean().backward()
        opt.step()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-10, atol=1e-12, msg=k)
    # The training moved the parameters (the comparison is not of untouched initial values).
    torch.manual_seed(0)
    fresh = DcnBlock(dct.deform_conv2d).double()
    assert not torch.allclose(fresh.weight, model.weight)
