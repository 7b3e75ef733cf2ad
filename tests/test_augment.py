"""Augmentation geometry against numpy's exact flips/turns/shifts, fill modes, randomness."""

import numpy as np
import pytest

from bigmodel_ray.data.augment import AugmentConfig, affine_matrix, augment_batch, warp_batch


def _asymmetric(h=9, w=9, c=3):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (1, h, w, c), dtype=np.uint8)


def _warp(img, fill_mode="nearest", cval=0, **params):
    h, w = img.shape[1:3]
    return warp_batch(img, affine_matrix(h, w, **params)[None], fill_mode, cval)


def test_zero_parameters_return_the_input():
    img = _asymmetric()
    assert np.array_equal(augment_batch(img, AugmentConfig(), np.random.default_rng(0)), img)
    assert np.array_equal(_warp(img), img)


@pytest.mark.parametrize("params, expected", [
    ({"flip_h": True}, lambda x: x[:, :, ::-1]),
    ({"flip_v": True}, lambda x: x[:, ::-1]),
    ({"angle": 90}, lambda x: np.rot90(x, k=1, axes=(1, 2))),     # counter-clockwise as displayed
    ({"angle": -90}, lambda x: np.rot90(x, k=-1, axes=(1, 2))),
    ({"angle": 180}, lambda x: x[:, ::-1, ::-1]),
])
def test_flips_and_quarter_turns_equal_numpy(params, expected):
    img = _asymmetric()
    assert np.array_equal(_warp(img, **params), expected(img))


def test_rectangular_flip_is_exact():
    img = _asymmetric(h=6, w=11, c=1)
    assert np.array_equal(_warp(img, flip_h=True), img[:, :, ::-1])


def test_shift_moves_a_marker_by_k_pixels():
    img = np.zeros((1, 20, 20, 1), np.uint8)
    img[0, 5, 7] = 255
    out = _warp(img, fill_mode="constant", tx=3, ty=-2)
    assert np.argwhere(out[0, :, :, 0] == 255).tolist() == [[3, 10]]


@pytest.mark.parametrize("fill_mode, left_columns", [
    ("nearest", lambda row: [row[0], row[0]]),
    ("constant", lambda row: [7, 7]),
    ("reflect", lambda row: [row[1], row[0]]),
    ("wrap", lambda row: [row[-2], row[-1]]),
])
def test_fill_modes_at_the_border(fill_mode, left_columns):
    row = np.arange(10, 90, 10, dtype=np.uint8)                 # 8 distinct columns
    img = np.tile(row, (1, 5, 1))[..., None]                      # (1, 5, 8, 1)
    out = _warp(img, fill_mode=fill_mode, cval=7, tx=2)           # content moves right by 2
    assert out[0, 2, :2, 0].tolist() == left_columns(row.tolist())
    assert out[0, 2, 2:, 0].tolist() == row[:-2].tolist()


def test_each_sample_gets_its_own_parameters():
    img = np.repeat(_asymmetric(h=32, w=32), 64, axis=0)
    cfg = AugmentConfig(rotation_range=30, width_shift_range=0.1, height_shift_range=0.1, shear_range=10,
                        zoom_range=(0.9, 1.1), horizontal_flip=True, brightness_range=(0.8, 1.2))
    out = augment_batch(img, cfg, np.random.default_rng(1))
    assert len({o.tobytes() for o in out}) == 64


def test_same_seed_same_batch_other_seed_other_batch():
    img = np.repeat(_asymmetric(h=16, w=16), 8, axis=0)
    cfg = AugmentConfig(rotation_range=20, zoom_range=(0.8, 1.2), vertical_flip=True, fill_mode="reflect")
    a, b = (augment_batch(img, cfg, np.random.default_rng([3, 1, 0])) for _ in range(2))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, augment_batch(img, cfg, np.random.default_rng([3, 2, 0])))


def test_composed_ops_are_one_warp_not_a_chain():
    # Zoom in x2 then shift: a single resample keeps a 1-pixel marker's mass in one place,
    # and the composed matrix equals the product of the separate ones.
    h = w = 21
    composed = affine_matrix(h, w, zx=2, zy=2, tx=3)
    zoom = np.vstack([affine_matrix(h, w, zx=2, zy=2), [0, 0, 1]])
    shift = np.vstack([affine_matrix(h, w, tx=3), [0, 0, 1]])
    np.testing.assert_allclose(composed, (shift @ zoom)[:2])


def test_unknown_fill_mode_is_rejected():
    with pytest.raises(ValueError, match="fill_mode must be one of"):
        _warp(_asymmetric(), fill_mode="mirror", angle=10)
