"""InternImage's DCNv3 CPU fallback (``dcnv3_core_pytorch``), written here from its definition:
pad, reference points at pixel centres, the kernel grid around them scaled by offset_scale,
offsets added in pixels, normalised to [-1, 1], ``grid_sample(align_corners=False,
padding_mode='zeros')``, times the mask, summed over the points. The test oracle of
test_dcnv3.py and the baseline of bench/dcnv3.py."""
import torch
import torch.nn.functional as F


def grid_sample_dcnv3(x, offset, mask, kh, kw, sh, sw, pad, dh, dw, group, gc, scale, remove_center):
    """InternImage's CPU fallback, for pad_h == pad_w (it pads H by pad_w and W by pad_h)."""
    x = F.pad(x, [0, 0, pad, pad, pad, pad])
    n, hin, win, _ = x.shape
    _, ho, wo, _ = offset.shape
    ah, aw = (dh * (kh - 1)) // 2, (dw * (kw - 1)) // 2
    ys = (ah + 0.5 + sh * torch.arange(ho, dtype=x.dtype)) / hin
    xs = (aw + 0.5 + sw * torch.arange(wo, dtype=x.dtype)) / win
    ref = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)  # [ho, wo, 2] as (x, y)
    gx = (-aw + dw * torch.arange(kw, dtype=x.dtype)) / win
    gy = (-ah + dh * torch.arange(kh, dtype=x.dtype)) / hin
    kx, ky = torch.meshgrid(gx, gy, indexing="ij")  # point p = i*kh + j
    grid = torch.stack([kx.reshape(-1), ky.reshape(-1)], -1)  # [K, 2]
    if remove_center:
        grid = torch.cat([grid[: (kh * kw) // 2], grid[(kh * kw) // 2 + 1:]])
    p = grid.shape[0]
    loc = ref[:, :, None, None, :] + scale * grid[None, None, None, :, :]  # [ho, wo, 1, P, 2]
    norm = torch.tensor([win, hin], dtype=x.dtype)
    loc = loc + offset.view(n, ho, wo, group, p, 2) * scale / norm  # [n, ho, wo, G, P, 2]
    grids = (2 * loc - 1).permute(0, 3, 1, 2, 4, 5).reshape(n * group, ho * wo, p, 2)
    xg = x.view(n, hin * win, group, gc).permute(0, 2, 3, 1).reshape(n * group, gc, hin, win)
    s = F.grid_sample(xg, grids, mode="bilinear", padding_mode="zeros", align_corners=False)  # [nG, gc, ho*wo, P]
    m = mask.view(n, ho * wo, group, p).permute(0, 2, 1, 3).reshape(n * group, 1, ho * wo, p)
    out = (s * m).sum(-1).view(n, group, gc, ho * wo).permute(0, 3, 1, 2)
    return out.reshape(n, ho, wo, group * gc)
