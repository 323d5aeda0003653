"""Logging and progress for stages: one logger per run, tqdm bars that also work in log files."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable

from tqdm.auto import tqdm

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str = "phenoica") -> logging.Logger:
    return logging.getLogger(name if name.startswith("phenoica") else f"phenoica.{name}")


def configure_logging(level: int = logging.INFO) -> None:
    """Send phenoica's log records to stderr (which Snakemake rules redirect to ``log:``)."""
    root = logging.getLogger("phenoica")
    if not any(getattr(h, "_phenoica", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler._phenoica = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None, **kwargs):
    """A tqdm progress bar on stderr. In a log file (not a TTY) it updates every 10 s, so logs
    stay readable; ``PHENOICA_PROGRESS=0`` turns bars off."""
    disable = os.environ.get("PHENOICA_PROGRESS", "1") == "0"
    mininterval = 0.5 if sys.stderr.isatty() else 10.0
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, mininterval=mininterval,
                disable=disable, dynamic_ncols=True, **kwargs)
