"""Synthetic factor datasets: independence, determinism, that every factor changes the image,
and the .npz round trip."""

from __future__ import annotations

import numpy as np
import pytest

from phenoica.errors import InputError
from phenoica.simulate.factors import (
    CELLS_FACTORS,
    DATASETS,
    SHAPES_FACTORS,
    codes_to_values,
    load_factor_dataset,
    make_factor_dataset,
    save_factor_dataset,
)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_shapes_ranges_and_determinism(name):
    ds = make_factor_dataset(name, 300, size=24, seed=3)
    assert ds.images.shape == (300, 3, 24, 24) and ds.images.dtype == np.float32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert ds.codes.shape == ds.factors.shape == (300, len(ds.specs))
    np.testing.assert_allclose(ds.factors, codes_to_values(ds.specs, ds.codes))
    again = make_factor_dataset(name, 300, size=24, seed=3)
    np.testing.assert_array_equal(ds.images, again.images)
    other = make_factor_dataset(name, 300, size=24, seed=4)
    assert not np.array_equal(ds.codes, other.codes)
    frame = ds.factor_frame()
    assert list(frame.columns) == list(ds.factor_names)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_factors_are_independent_and_cover_their_grid(name):
    ds = make_factor_dataset(name, 4000, size=16, seed=0)
    for k, spec in enumerate(ds.specs):
        counts = np.bincount(ds.codes[:, k], minlength=spec.n_values)
        assert counts.min() > 0.6 * len(ds) / spec.n_values, spec.name
    corr = np.corrcoef(ds.codes.T)
    off_diagonal = corr[~np.eye(len(ds.specs), dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.06


@pytest.mark.parametrize("name,specs", [("shapes", SHAPES_FACTORS), ("cells", CELLS_FACTORS)])
def test_every_factor_changes_the_image(name, specs):
    """Changing one factor from its lowest to its highest value (others fixed) changes pixels."""
    render = DATASETS[name].render
    base = np.array([s.values()[len(s.values()) // 2] for s in specs])
    if name == "cells":
        base[specs.index(next(s for s in specs if s.name == "puncta_texture"))] = 0.5
    ref = render(base[None], size=32)
    for k, spec in enumerate(specs):
        for value in (spec.values()[0], spec.values()[-1]):
            changed = base.copy()
            changed[k] = value
            if value == base[k]:
                continue
            diff = np.abs(render(changed[None], size=32) - ref).mean()
            assert diff > 1e-3, (spec.name, value)


def test_shapes_are_distinct_and_rotation_moves_pixels():
    values = np.array([[s, 0.4, 0.0, 0.0, 0.0, 0.3, 0.6] for s in range(3)])
    imgs = DATASETS["shapes"].render(values, size=32)
    areas = (np.abs(imgs - imgs[:, :, :1, :1]).sum(axis=1) > 0.1).sum(axis=(1, 2))
    assert len(set(areas.tolist())) == 3  # square, ellipse and triangle differ
    rotated = values.copy()
    rotated[:, 2] = np.deg2rad(40)
    assert np.abs(DATASETS["shapes"].render(rotated, size=32) - imgs).mean() > 1e-3


def test_round_trip_and_bad_files(tmp_path):
    ds = make_factor_dataset("cells", 50, size=16, seed=1, n_values={"nucleus_size": 3})
    assert ds.specs[0].n_values == 3 and ds.codes[:, 0].max() <= 2
    path = save_factor_dataset(ds, tmp_path / "cells.npz")
    back = load_factor_dataset(path)
    assert back.name == "cells" and back.factor_names == ds.factor_names
    assert back.factor_kinds == ds.factor_kinds and back.channel_names == ds.channel_names
    np.testing.assert_array_equal(back.codes, ds.codes)
    np.testing.assert_allclose(back.factors, ds.factors)
    np.testing.assert_allclose(back.images, ds.images, atol=0.5 / 255 + 1e-7)
    assert back.meta["seed"] == 1
    assert not list(tmp_path.glob("*.partial"))

    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(InputError, match="junk.npz"):
        load_factor_dataset(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 1, 4, 4)))
    with pytest.raises(InputError, match="not a phenoica factor dataset"):
        load_factor_dataset(tmp_path / "other.npz")


def test_bad_arguments():
    with pytest.raises(InputError, match="unknown synthetic dataset"):
        make_factor_dataset("dsprites", 10)
    with pytest.raises(InputError, match="unknown factors"):
        make_factor_dataset("shapes", 10, n_values={"colour": 3})
    with pytest.raises(InputError, match="at least 2"):
        make_factor_dataset("shapes", 10, n_values={"scale": 1})
