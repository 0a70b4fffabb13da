"""Smoke test of an installed wheel, run in a fresh venv with no cargo on PATH (./test.sh).

Checks that the package imports from the wheel (not from the checkout), that the extension runs
on this CPU, and that a deformable convolution with integer offsets equals the shifted plain
convolution computed here with numpy alone.
"""
import pathlib
import shutil
import sys

import numpy as np

import deform_conv as dc

here = pathlib.Path(__file__).resolve().parents[2]
assert not pathlib.Path(dc.__file__).resolve().is_relative_to(here), f"imported from the checkout: {dc.__file__}"
assert shutil.which("cargo") is None, "cargo is on PATH: this must run without Rust"

rng = np.random.default_rng(1)
x = rng.standard_normal((2, 5, 9, 8)).astype(np.float32)
w = rng.standard_normal((3, 5, 3, 3)).astype(np.float32)
# Every tap moved by (+1, -1): the same as sampling the image shifted by one row and column.
off = np.tile(np.array([1.0, -1.0], np.float32), 9)[None, :, None, None] * np.ones((2, 1, 9, 8), np.float32)
y = dc.deform_conv2d(x, off, w, padding=1)

pad = np.zeros((2, 5, 9 + 4, 8 + 4), np.float32)
pad[:, :, 2:-2, 2:-2] = x
want = np.zeros((2, 3, 9, 8), np.float32)
for i in range(3):
    for j in range(3):
        # padded coordinate: oh - 1 + i + 1 (offset) + 2 (border), ow - 1 + j - 1 + 2
        patch = pad[:, :, i + 2:i + 2 + 9, j:j + 8]
        want += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
err = float(np.abs(y - want).max())
assert err < 1e-4, err
print(f"wheel smoke test: deform_conv {dc.__file__}, {dc.active_isa()} kernels, max error {err:.1e}: ok")
sys.exit(0)
