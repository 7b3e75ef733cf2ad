"""Domain pairs offline: `data.shift` on image sources (in the pipeline) and MNIST-1D generator variants."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_data import write_image_folder

from bigmodel_ray.cli import main
from bigmodel_ray.data import load_data
from bigmodel_ray.data.augment import AugmentConfig, augment_batch, draws_for_keys
from bigmodel_ray.data.images import ImageFormat
from bigmodel_ray.data.pipeline import Transform, transform_batch
from bigmodel_ray.data.shift import Shift
from bigmodel_ray.data.synthetic import generate
from bigmodel_ray.spec import DataSpec, SpecError, load_job

SPLITS = ("train", "val", "test")


def _split_images(spec) -> dict[str, list[bytes]]:
    """Each split's images as sorted bytes: streaming order is not file order."""
    data = load_data(spec)
    return {name: sorted(r["x"].tobytes() for r in ds.take_all()) for name, ds in data.datasets.items()}


# ---------------------------------------------------------------------------- in the pipeline (no Ray)

SYNTHETIC = dict(storage="ids", fmt=ImageFormat(16, 16, 3), synthetic=(16, 3))


def test_noise_is_per_row_and_independent_of_the_batch():
    noisy = Transform(**SYNTHETIC, shift=Shift(noise=0.05, seed=3))
    whole = transform_batch({"id": np.arange(8)}, noisy)["x"]
    again = transform_batch({"id": np.array([5, 3])}, noisy)["x"]        # another batch, another order
    np.testing.assert_array_equal(whole[[5, 3]], again)
    plain = transform_batch({"id": np.arange(8)}, Transform(**SYNTHETIC))["x"]
    noise = whole.astype(float) - plain
    assert 10 < noise.std() < 14                                        # 0.05 of 0..255, a little clipped
    assert not np.array_equal(noise[0], noise[1])                      # each row its own draw
    other_seed = transform_batch({"id": np.arange(8)}, Transform(**SYNTHETIC, shift=Shift(noise=0.05, seed=4)))["x"]
    assert not np.array_equal(other_seed, whole)


def test_shift_comes_before_the_train_augmentation():
    # Inversion commutes with a warp except at the border: a constant black fill stays black only
    # if the images were inverted first.
    cfg = AugmentConfig(rotation_range=30, fill_mode="constant", cval=0.0)
    ids = np.arange(6)
    got = transform_batch({"id": ids}, Transform(**SYNTHETIC, augment=cfg, shift=Shift(invert=True), seed=1))["x"]
    images, _ = generate(ids, 16, 3, 3, split_seed=0)
    expected = augment_batch(255 - images, cfg, draws=draws_for_keys(ids.astype(np.uint64), 1, 0))
    np.testing.assert_array_equal(got, expected.transpose(0, 3, 1, 2))


# ---------------------------------------------------------------------------- image sources on Ray

@pytest.mark.usefixtures("ray_cluster")
def test_image_folder_shift_covers_every_split_and_noise_repeats(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=6, size=12)
    spec = dict(source="image_folder", path=str(root), val_fraction=0.25, test_fraction=0.25)
    plain = _split_images(DataSpec(**spec))
    inverted = _split_images(DataSpec(**spec, shift={"invert": True}))
    for name in SPLITS:
        assert plain[name], name
        flipped = sorted((255 - np.frombuffer(b, np.uint8)).tobytes() for b in inverted[name])
        assert flipped == plain[name], name                             # exactly 255 - x, every split

    noisy_spec = DataSpec(**spec, shift={"noise": 0.1, "seed": 3})
    first, second = _split_images(noisy_spec), _split_images(noisy_spec)
    for name in SPLITS:
        assert first[name] == second[name], name                        # the same noise in another read
        assert not set(first[name]) & set(plain[name]), name            # and every row has some


@pytest.mark.usefixtures("ray_cluster")
def test_parquet_rotation_180_is_two_quarter_turns(tmp_path):
    # Asymmetric images (a ramp and a bright corner), each its own label so rows can be matched.
    n, h, w = 6, 10, 14
    ramp = np.add.outer(np.arange(h) * 8, np.arange(w) * 4)
    images = np.stack([np.repeat((ramp + 10 * i)[..., None], 3, axis=2) for i in range(n)]).astype(np.uint8)
    images[:, :3, :2] = 250
    for split in SPLITS:
        (tmp_path / "pq" / split).mkdir(parents=True)
        pq.write_table(pa.table({"image": [im.tobytes() for im in images], "label": pa.array(range(n), pa.int32())}),
                       tmp_path / "pq" / split / "part-0.parquet")
    spec = DataSpec(source="parquet", path=str(tmp_path / "pq"), image_format="raw", image_shape=(h, w, 3),
                    shift={"rotation": 180})
    expected = np.rot90(images, 2, axes=(1, 2)).transpose(0, 3, 1, 2).astype(int)
    for name, ds in load_data(spec).datasets.items():
        rows = sorted(ds.take_all(), key=lambda r: r["y"])
        got = np.stack([r["x"] for r in rows]).astype(int)
        assert [r["y"] for r in rows] == list(range(n)), name
        assert np.abs(got - expected).max() <= 1, name                  # bilinear at integer points


# ---------------------------------------------------------------------------- MNIST-1D variants

VARIANT = {"scale_coeff": 0.6, "iid_noise_scale": 0.1, "corr_noise_scale": 0.5, "shear_scale": 1.2,
           "max_translation": 60, "seed": 7}


def test_mnist1d_generator_variant_differs_and_is_cached(tmp_path, monkeypatch):
    import mnist1d.data

    from bigmodel_ray.data.builtin import load_mnist1d

    default = load_mnist1d(0.1, 0.15, 0)
    monkeypatch.setenv("BIGMODEL_RAY_CACHE", str(tmp_path))
    variant = load_mnist1d(0.1, 0.15, 0, generator=VARIANT)
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 1
    for name in SPLITS:
        assert variant[name][0].shape == default[name][0].shape, name   # same layout, other data
    assert not np.allclose(variant["test"][0], default["test"][0])

    def regenerate(*_):
        raise AssertionError("a cached variant is generated again")

    monkeypatch.setattr(mnist1d.data, "make_dataset", regenerate)
    again = load_mnist1d(0.1, 0.15, 0, generator=VARIANT)
    for name in SPLITS:
        np.testing.assert_array_equal(again[name][0], variant[name][0])
        np.testing.assert_array_equal(again[name][1], variant[name][1])


@pytest.mark.usefixtures("ray_cluster")
def test_mnist1d_generator_reaches_the_source(tmp_path, monkeypatch):
    from bigmodel_ray.data import open_source
    from bigmodel_ray.data.builtin import load_mnist1d

    monkeypatch.setenv("BIGMODEL_RAY_CACHE", str(tmp_path))
    source = open_source(DataSpec(source="mnist1d", generator={"seed": 7}))
    np.testing.assert_array_equal(source.first_image, load_mnist1d(0.1, 0.15, 0, generator={"seed": 7})["train"][0][0])
    assert not np.array_equal(source.first_image, load_mnist1d(0.1, 0.15, 0)["train"][0][0])


@pytest.mark.parametrize("override, message", [
    ("data.generator={foo: 1}", "data.generator: 'foo': unknown argument; vary scale_coeff, max_translation"),
    ("data.generator={final_seq_length: 80}", "data.generator: 'final_seq_length': fixed (it sets the sequence"),
    ("data.generator={url: x}", "data.generator: 'url': unknown argument"),
    ("data.generator={seed: -1}", "data.generator: 'seed': must be a whole number >= 0 (got -1; default 42)"),
    ("data.generator={scale_coeff: big}", "data.generator: 'scale_coeff': must be a number >= 0 (got 'big'"),
    ("data.source=digits|data.generator={seed: 1}", "data.generator: only for source mnist1d (source is digits)"),
    ("data.shift={rotation: 90}", "data.shift: rotation needs 2-D images; mnist1d is 1-D"),
])
def test_bad_generator_or_shift_names_the_field(tiny_job, override, message):
    path = tiny_job()
    with pytest.raises(SpecError) as e:
        load_job(path, override.split("|"))
    assert str(e.value).startswith(f"{path}: {message}")


def test_cli_rejects_a_bad_generator_with_one_line(tiny_job, capsys):
    path = tiny_job()
    assert main(["validate", str(path), "--set", "data.generator={template_len: 20}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: data.generator: 'template_len': fixed") and err.count("\n") == 1
    # Shift on a non-built-in source is accepted now.
    assert main(["validate", str(path), "--set", "data.source=synthetic", "--set", "data.shift={rotation: 90}"]) == 0
