"""The affine warp of `augment.warp_batch`, batched in torch so it can run on the training GPU.

Why it exists: with a GPU, augmenting there (one batched op) keeps the data loaders off the
critical path; without one, `augment.warp_batch` (OpenCV) is the faster path per CPU core.
Same contract as `warp_batch`: forward pixel matrices (source -> output, pixel centres at
integer coordinates), bilinear sampling, same fill modes, identity transforms return the input.
Images here are channels-first float tensors (n, C, H, W).

It is a manual bilinear gather on pixel indices, with the border handled on the integer
indices of the 4 neighbours exactly as OpenCV's remap does, so one code path covers all four
modes and needs no normalized coordinates (hence no align_corners choice). F.grid_sample
(align_corners=False, pixel i at (2i + 1) / W - 1) was checked: "border", "reflection" (it does
equal cv2.BORDER_REFLECT) and "zeros" shifted by cval agree to ~1e-3 and run ~5x faster per
CPU core, but it has no wrap mode and its float32 normalized grid blends in ~1e-7 of a
neighbour on flips and quarter turns, which this gather reproduces exactly.
"""

import torch

FILL_MODES = ("nearest", "constant", "reflect", "wrap")


def _border_index(i: torch.Tensor, size: int, fill_mode: str) -> torch.Tensor:
    """Map integer source indices (any value) into [0, size) like cv2.borderInterpolate."""
    if fill_mode == "wrap":                       # abcd|abcd|abcd
        return i.remainder(size)
    if fill_mode == "reflect":                    # dcba|abcd|dcba: period 2*size, edge pixel repeated
        i = i.remainder(2 * size)
        return torch.where(i >= size, 2 * size - 1 - i, i)
    return i.clamp(0, size - 1)                   # nearest (aaaa|abcd|dddd); constant masks outside


def warp_batch_torch(images: torch.Tensor, matrices: torch.Tensor, fill_mode: str = "nearest",
                     cval: float = 0.0) -> torch.Tensor:
    """Apply one forward affine warp per image; images (n, C, H, W) float, matrices (n, 2, 3)."""
    if fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode must be one of {' | '.join(FILL_MODES)} (got {fill_mode!r})")
    n, c, h, w = images.shape
    dev = images.device
    m = matrices.to(dev, torch.float64).reshape(n, 2, 3)
    # Invert the forward matrix in float64 (as cv2.warpAffine does): output pixel -> source pixel.
    a, b, tx, d, e, ty = m.reshape(n, 6).unbind(1)
    det = a * e - b * d
    inv = torch.stack([e, -b, b * ty - e * tx, -d, a, d * tx - a * ty], 1).div(det[:, None]).view(n, 1, 1, 6)
    x = torch.arange(w, device=dev, dtype=torch.float64)
    y = torch.arange(h, device=dev, dtype=torch.float64)[:, None]
    sx = (inv[..., 0] * x + inv[..., 1] * y + inv[..., 2]).view(n, h * w)     # source coords of each
    sy = (inv[..., 3] * x + inv[..., 4] * y + inv[..., 5]).view(n, h * w)     # output pixel
    # Snap to 2**-20 px: cos(90deg) ~ 6e-17 leaves coordinates like 2.9999999999999996 or 3.0000000000000004,
    # which would blend in a 1e-16 sliver of a neighbour; snapped, flips and quarter turns are exact.
    sx, sy = (sx * 2**20).round_().div_(2**20), (sy * 2**20).round_().div_(2**20)
    x0, y0 = sx.floor(), sy.floor()
    fx, fy = (sx - x0).to(images.dtype), (sy - y0).to(images.dtype)
    x0, y0 = x0.clamp(-2**40, 2**40).long(), y0.clamp(-2**40, 2**40).long()   # far-off points stay finite

    # The two columns and two rows of the 2x2 neighbourhood: border-mapped indices and weights.
    cols = [(_border_index(x0 + k, w, fill_mode), wx) for k, wx in ((0, 1 - fx), (1, fx))]
    rows = [(_border_index(y0 + k, h, fill_mode) * w, wy) for k, wy in ((0, 1 - fy), (1, fy))]
    if fill_mode == "constant":          # a neighbour outside the image reads cval: zero its weight here
        cols = [(i, wx * ((x0 + k >= 0) & (x0 + k < w))) for k, (i, wx) in enumerate(cols)]
        rows = [(i, wy * ((y0 + k >= 0) & (y0 + k < h))) for k, (i, wy) in enumerate(rows)]
    flat = images.reshape(n, c, h * w)
    out = torch.zeros(n, c, h * w, dtype=images.dtype, device=dev)
    for yi, wy in rows:
        for xi, wx in cols:
            out.addcmul_((wx * wy)[:, None], flat.gather(2, (yi + xi)[:, None].expand(n, c, h * w)))
    if fill_mode == "constant":          # ... and give cval the weight those neighbours lost
        out += cval * (1 - (cols[0][1] + cols[1][1]) * (rows[0][1] + rows[1][1]))[:, None]
    out = out.view(n, c, h, w)
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64, device=dev)
    keep = (m == identity).flatten(1).all(1)                        # copied untouched, like warp_batch
    return torch.where(keep[:, None, None, None], images, out)
