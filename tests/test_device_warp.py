"""The torch warp (GPU path) against the OpenCV warp (CPU path) it must reproduce; CPU only."""

import numpy as np
import pytest
import torch

from bigmodel_ray.data.augment import AugmentConfig, affine_matrix, sample_matrices, warp_batch
from bigmodel_ray.data.device_warp import warp_batch_torch

N, C, H, W = 4, 3, 17, 23          # odd, non-square
CFG = AugmentConfig(rotation_range=40, width_shift_range=0.3, height_shift_range=0.3, shear_range=15,
                    zoom_range=(0.6, 1.5), horizontal_flip=True, vertical_flip=True)


def _images(n=N, c=C, h=H, w=W, seed=0):
    """uint8-valued float32 images, NHWC (OpenCV's layout)."""
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c)).astype(np.float32)


def _torch_warp(images_nhwc, matrices, fill_mode="nearest", cval=0.0):
    out = warp_batch_torch(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2), torch.as_tensor(matrices),
                           fill_mode, cval)
    return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("fill_mode", ["nearest", "constant", "reflect", "wrap"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_opencv(fill_mode, seed):
    # Measured max |diff| on 0..255 values: 7-8e-4 per mode at 17x23 (~0.011 at 224x224): rounding only.
    rng = np.random.default_rng(seed)
    images = _images(seed=seed)
    matrices = sample_matrices(CFG, 16 * N, H, W, rng)      # 64 random transforms over 16 batches
    for batch in np.split(matrices, 16):
        expected = warp_batch(images, batch, fill_mode, 7.0)
        np.testing.assert_allclose(_torch_warp(images, batch, fill_mode, 7.0), expected, rtol=0, atol=5e-3)


@pytest.mark.parametrize("fill_mode", ["nearest", "constant", "reflect", "wrap"])
def test_matches_opencv_far_outside_the_image(fill_mode):
    # Large shifts and zoom-outs: most samples come from the border rule, many periods away.
    cfg = AugmentConfig(rotation_range=180, width_shift_range=2.0, height_shift_range=2.0, zoom_range=(0.2, 3.0))
    images = _images(n=8, c=1, h=5, w=8)
    matrices = sample_matrices(cfg, 8, 5, 8, np.random.default_rng(1))
    expected = warp_batch(images, matrices, fill_mode, 7.0)
    np.testing.assert_allclose(_torch_warp(images, matrices, fill_mode, 7.0), expected, rtol=0, atol=5e-3)


def test_identity_returns_the_input_exactly():
    images = torch.from_numpy(_images()).permute(0, 3, 1, 2)
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(N, 2, 3)
    for fill_mode in ("nearest", "constant", "reflect", "wrap"):
        assert torch.equal(warp_batch_torch(images, identity, fill_mode, 7.0), images)


@pytest.mark.parametrize("params, expected", [
    ({"angle": 90}, lambda x: np.rot90(x, k=1, axes=(1, 2))),      # counter-clockwise as displayed
    ({"angle": -90}, lambda x: np.rot90(x, k=-1, axes=(1, 2))),
    ({"angle": 180}, lambda x: x[:, ::-1, ::-1]),
    ({"flip_h": True}, lambda x: x[:, :, ::-1]),
    ({"flip_v": True}, lambda x: x[:, ::-1]),
])
@pytest.mark.parametrize("size", [9, 16])
def test_quarter_turns_and_flips_are_exact(params, expected, size):
    images = _images(n=1, h=size, w=size)
    images[0, 0] = 0                     # exact zeros would show any sliver of a neighbour blended in
    for fill_mode in ("nearest", "constant", "reflect", "wrap"):
        out = _torch_warp(images, affine_matrix(size, size, **params)[None], fill_mode, 7.0)
        assert np.array_equal(out, expected(images))


def test_float64_and_float32_matrices_on_a_float32_image():
    images = torch.from_numpy(_images()).permute(0, 3, 1, 2)
    m64 = torch.from_numpy(sample_matrices(CFG, N, H, W, np.random.default_rng(2)))
    out64, out32 = warp_batch_torch(images, m64), warp_batch_torch(images, m64.float())
    assert out64.dtype == out32.dtype == torch.float32 and out64.shape == images.shape
    torch.testing.assert_close(out32, out64, rtol=0, atol=5e-3)     # measured 3.4e-4: float32 matrix entries


def test_constant_fill_far_outside_is_cval():
    images = torch.from_numpy(_images()).permute(0, 3, 1, 2)
    shift = torch.from_numpy(affine_matrix(H, W, tx=100.0))[None].expand(N, 2, 3)
    assert torch.equal(warp_batch_torch(images, shift, "constant", 7.0), torch.full_like(images, 7.0))


def test_unknown_fill_mode_is_rejected():
    with pytest.raises(ValueError, match="fill_mode"):
        warp_batch_torch(torch.zeros(1, 1, 2, 2), torch.eye(2, 3)[None], "mirror")
