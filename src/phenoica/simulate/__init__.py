"""Simulated screens with known biology and batch effects (the built-in demo).

Plates (``simulate_plate``) are rendered as 5-channel Cell-Painting-like TIFFs in the RxRx
layout, with a plate map and a per-site ground-truth table; ``design_screen`` and
``related_pairs`` describe the perturbations, their mechanisms and their true effects.
Synthetic factor datasets for the disentanglement benchmark live in ``simulate.factors``.
"""

from .design import (
    CHANNEL_NAMES,
    CHANNELS,
    CONTROL_NAME,
    FACTOR_NAMES,
    FACTORS,
    design_screen,
    related_pairs,
    write_design,
)
from .params import DEFAULT_PARAMS, PARAM_DOCS, SimulateParamsError, resolve_params
from .plates import (
    batch_parameters,
    image_name,
    plate_layout,
    plate_parameters,
    plate_wells,
    simulate_plate,
)

__all__ = [
    "CHANNELS",
    "CHANNEL_NAMES",
    "CONTROL_NAME",
    "DEFAULT_PARAMS",
    "FACTORS",
    "FACTOR_NAMES",
    "PARAM_DOCS",
    "SimulateParamsError",
    "batch_parameters",
    "design_screen",
    "image_name",
    "plate_layout",
    "plate_parameters",
    "plate_wells",
    "related_pairs",
    "resolve_params",
    "simulate_plate",
    "write_design",
]
