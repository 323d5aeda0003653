"""Errors a user can act on: every one names the file (or config key) and the problem."""

from __future__ import annotations

from pathlib import Path


class PhenoicaError(Exception):
    """Base class for errors caused by user input (data, sheets, config)."""


class InputError(PhenoicaError, ValueError):
    """Bad input data. ``source`` is the file or key that is wrong; ``problem`` says what."""

    def __init__(self, source: str | Path | None, problem: str):
        self.source = str(source) if source is not None else None
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


class ConfigError(PhenoicaError, ValueError):
    """A config or sheet value that breaks the schema or a cross-key rule."""
