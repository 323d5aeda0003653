"""What each model sees for uint8, uint16 and float images (README "Image bit depth").

On the real images of tests/data: the Phenix Cell Painting site (uint16, raw camera counts) and
CellProfiler's ExampleFly fields (uint8). Every image is also written as float32 with the same
values and as float32 scaled to [0, 1] (scikit-image's ``img_as_float``), and the model input and
embeddings of the three are compared.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from helpers_data import FLY, PHENIX, REPO
from helpers_models import TINY_MAE

from phenoica.config import schema_defaults
from phenoica.embed import embed_sites, resolve_embed_config
from phenoica.errors import ConfigError
from phenoica.models.data import load_site, tile_site
from phenoica.models.layers import self_standardize
from phenoica.models.registry import get_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: the central 128 x 128 pixels of the real images (4 crops of 64 px; keeps the models fast)
WINDOW = np.s_[206:334, 206:334]
PHENIX_CHANNELS = ["brightfield", "ER", "AGP", "Mito", "DNA", "RNA"]
FLY_CHANNELS = ["DNA", "green", "red"]
#: a channel-agnostic MAE that feeds itself like OpenPhenom (pixels / 255, then per-crop
#: channel standardisation inside the model; the data stage passes raw values)
SELF_STANDARDIZING = {"name": "camae_vit_demo", "overrides": {**TINY_MAE, "img_size": 64,
                                                              "input_norm": "self_standardize"}}
DEMO_MAE = {"name": "mae_vit_demo", "overrides": {**TINY_MAE, "img_size": 64}}
EMBED = {**schema_defaults("embed"), "num_workers": 0, "layers": [3], "crop_size": 64, "stride": 64}


def _real_site(kind: str) -> list[np.ndarray]:
    if kind == "uint16":
        files = sorted((REPO / PHENIX).glob("r03c03f03p01-ch*sk1fk1fl1.tiff"))
    else:
        files = sorted((REPO / FLY).glob("01_POS076_*.TIF"))
    planes = [tifffile.imread(f)[WINDOW] for f in files]
    assert all(p.dtype == np.dtype(kind) for p in planes)
    return planes


def _write_site(folder, planes: list[np.ndarray], channels: list[str], how: str) -> pd.DataFrame:
    """One site as TIFFs: ``stored`` (as read), ``float`` (float32, same values) or ``unit``
    (float32 divided by the dtype's maximum: [0, 1])."""
    folder.mkdir(parents=True)
    record = {"site_id": f"{how}:A01:1", "plate": how, "batch": "B", "well": "A01", "site": 1}
    for name, plane in zip(channels, planes):
        if how == "float":
            plane = plane.astype(np.float32)
        elif how == "unit":
            plane = (plane / np.iinfo(plane.dtype).max).astype(np.float32)
        path = folder / f"{name}.tif"
        tifffile.imwrite(path, plane)
        record[f"path_{name}"] = str(path)
    return pd.DataFrame([record])


@pytest.fixture(scope="module", params=["uint16", "uint8"])
def sites(request, tmp_path_factory):
    """kind -> {how: manifest path} for the real site of that dtype, written three ways."""
    planes = _real_site(request.param)
    channels = PHENIX_CHANNELS if request.param == "uint16" else FLY_CHANNELS
    root = tmp_path_factory.mktemp(request.param)
    manifests = {}
    for how in ("stored", "float", "unit"):
        manifest = root / f"{how}.parquet"
        _write_site(root / how, planes, channels, how).to_parquet(manifest, index=False)
        manifests[how] = manifest
    return request.param, channels, manifests


def _paths(manifest, channels) -> list[str]:
    row = pd.read_parquet(manifest).iloc[0]
    return [row[f"path_{c}"] for c in channels]


def test_model_input_for_each_dtype(sites):
    """image/plate normalisation: the stored scale does not matter. none (models that normalise
    inside): values as stored, and [0, 1] floats back on the 16-bit scale."""
    kind, channels, manifests = sites
    stored, as_float, unit = (_paths(manifests[h], channels) for h in ("stored", "float", "unit"))
    raw = load_site(stored, "none")
    assert raw.dtype == np.float32
    assert np.array_equal(raw, np.stack([tifffile.imread(p) for p in stored]).astype(np.float32))
    assert np.array_equal(load_site(as_float, "none"), raw)
    full_scale = np.iinfo(kind).max
    np.testing.assert_allclose(load_site(unit, "none"), raw * (65535.0 / full_scale), rtol=1e-6)
    stats = (raw.reshape(len(channels), -1).mean(1), raw.reshape(len(channels), -1).std(1))
    for how, paths in (("float", as_float), ("unit", unit)):
        scale = 1.0 if how == "float" else 1.0 / full_scale
        np.testing.assert_allclose(load_site(paths, "image"), load_site(stored, "image"), atol=2e-4)
        np.testing.assert_allclose(load_site(paths, "plate", (stats[0] * scale, stats[1] * scale)),
                                   load_site(stored, "plate", stats), atol=2e-4)


@pytest.mark.parametrize("model", [SELF_STANDARDIZING, DEMO_MAE], ids=["self_standardizing", "demo_mae"])
def test_embedding_is_the_same_for_every_dtype_of_one_image(sites, model):
    """The uint16/uint8 image, its float copy and its [0, 1] float version embed alike with the
    OpenPhenom-style model (raw values, standardised inside) and with the demo MAE (plate
    normalisation). Before [0, 1] floats were rescaled, the self-standardising model saw them
    nearly flat and embedded them far from the integer image."""
    kind, channels, manifests = sites
    if model is DEMO_MAE:
        model = {**model, "overrides": {**model["overrides"], "in_chans": len(channels)}}
    embed = {**EMBED, "normalization": "none" if model is SELF_STANDARDIZING else "plate"}
    X = {how: embed_sites(manifests[how], model, None, channels, False, "cpu", **embed).X[0]
         for how in ("stored", "float", "unit")}
    assert np.array_equal(X["float"], X["stored"])
    # [0, 1] floats go onto the 16-bit scale: for a uint16 image that is its own scale; for a
    # uint8 one it lifts low-contrast crops out of reach of eps, which the uint8 values are not
    # (a difference of a few thousandths here)
    atol = 5e-3 if kind == "uint8" and model is SELF_STANDARDIZING else 2e-4
    np.testing.assert_allclose(X["unit"], X["stored"], rtol=0, atol=atol)
    assert np.abs(X["stored"]).max() > 100 * atol


def test_what_a_model_trained_on_0_255_inputs_gets_from_raw_uint16():
    """OpenPhenom divides by 255 and standardises each crop channel with eps 1e-5. Raw 16-bit
    counts (standard deviations of hundreds to thousands) come out exactly standardised, as a
    well-exposed 8-bit crop does; a linear conversion of the same crops to 0-255 (divide by 257)
    leaves dim crops within reach of eps, which shrinks them."""
    planes = np.stack([tifffile.imread(f) for f in
                       sorted((REPO / PHENIX).glob("r03c03f03p01-ch*sk1fk1fl1.tiff"))])
    crops = torch.from_numpy(tile_site(planes.astype(np.float32), 256, 256))  # (9, 6, 256, 256)
    raw = self_standardize(crops).std(dim=(2, 3))
    eight_bit = self_standardize(crops / 257.0).std(dim=(2, 3))
    assert torch.allclose(raw, torch.ones_like(raw), atol=1e-3)
    assert eight_bit.min() < 0.5 and eight_bit.max() < 1.0  # the dimmest crop loses over half
    unit = self_standardize(crops / 65535.0).std(dim=(2, 3))
    assert unit.max() < 0.2  # what [0, 1] floats would give without the rescaling


def test_image_or_plate_normalisation_before_a_self_standardizing_model_is_refused():
    spec = get_spec("openphenom")
    assert resolve_embed_config(dict(EMBED, normalization=None), spec)["normalization"] == "none"
    for mode in ("image", "plate"):
        with pytest.raises(ConfigError, match=rf"embed.normalization: '{mode}' does not fit"):
            resolve_embed_config(dict(EMBED, normalization=mode, crop_size=None, stride=None), spec)
