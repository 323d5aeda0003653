"""Where the tests' real data lives in the repository (each folder's README.md says what it is,
where it comes from and how it was made). Paths are relative to the repository root, as a plate
sheet or config run from there would name them; ``REPO / path`` gives the absolute path."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: one real 6-channel Cell Painting site (Phenix naming), 540 x 540 uint16
PHENIX = "tests/data/images/cellpainting_phenix_BR00143976"
#: CellProfiler's ExampleFly: 3 fields x 3 channels, 503 x 500 uint8
FLY = "tests/data/images/examplefly"
#: BBBC021 replicate 1+2 per-well CellProfiler profiles (also the BBBC021 example's input)
BBBC021 = "config/examples/data/bbbc021/bbbc021_well_profiles_rep12.csv.gz"
#: every state-dict key of OpenPhenom's MAEModel with its shape (no weights)
OPENPHENOM_SHAPES = "tests/data/openphenom/state_dict_shapes.json"
