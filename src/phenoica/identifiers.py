"""Identifiers that become file names (plate, batch, well) and well-name normalisation."""

from __future__ import annotations

import re

from .errors import InputError

#: Identifiers that become file and folder names (plate, batch, model id, channel name): the one
#: definition. The JSON schemas refer to it as ``$ref: "#/$defs/identifier"`` (their ``$defs``
#: are filled from here by :func:`phenoica.config.load_schema`) and the Snakefile's wildcard
#: constraints use it (``IDENTIFIER`` in workflow/rules/common.smk).
IDENTIFIER_PATTERN = "[A-Za-z0-9][A-Za-z0-9_.-]*"
#: Post-processing output names (``obsm["X_phenoica_<name>"]``, a path component): no dots or dashes.
METHOD_NAME_PATTERN = "[A-Za-z0-9][A-Za-z0-9_]*"
#: Prefix of the obsm keys of phenoica's representations. scanpy owns ``X_pca``, ``X_umap``,
#: ``X_tsne``, ``X_diffmap``, ``X_draw_graph_<layout>``, ``X_pca_harmony`` ...
#: (``sc.pp.pca`` overwrites ``X_pca``); ``X_phenoica_<name>`` collides with none of them and
#: keeps scanpy's ``X_`` prefix, so ``sc.pl.embedding(adata, basis="phenoica_pca_ica")`` works.
OBSM_PREFIX = "X_phenoica_"
IDENTIFIER_RE = re.compile(f"^{IDENTIFIER_PATTERN}$")
_WELL_RE = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*([0-9]{1,3})\s*$")


def check_identifier(value: object, what: str, source: str | None = None) -> str:
    """Return ``value`` as str if it is a safe identifier, else raise InputError naming it."""
    text = str(value)
    if not IDENTIFIER_RE.match(text) or text in {".", ".."}:
        raise InputError(
            source,
            f"{what} {text!r} is not a valid identifier: use letters, digits, '_', '.', '-' "
            f"(must start with a letter or digit; no path separators or spaces)",
        )
    return text


def obsm_key(name: str) -> str:
    """The obsm key of post-processing output ``name``: ``X_phenoica_<name>`` (``pca`` ->
    ``X_phenoica_pca``, never scanpy's ``X_pca``)."""
    return f"{OBSM_PREFIX}{str(name).replace('/', '_')}"


def row_letters(row: int) -> str:
    """1 -> 'A', 26 -> 'Z', 27 -> 'AA' (1536-well plates have 32 rows)."""
    if row < 1:
        raise ValueError(f"row index must be >= 1, got {row}")
    letters = ""
    while row:
        row, rem = divmod(row - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


def row_index(letters: str) -> int:
    """'A' -> 1, 'AA' -> 27."""
    idx = 0
    for ch in letters.upper():
        idx = idx * 26 + (ord(ch) - ord("A") + 1)
    return idx


def well_name(row: int, col: int) -> str:
    """(3, 3) -> 'C03'."""
    return f"{row_letters(int(row))}{int(col):02d}"


def normalize_well(value: object, source: str | None = None) -> str:
    """'c3', 'C03', 'C003', ' C 3 ' -> 'C03'. Raises InputError for anything else."""
    match = _WELL_RE.match(str(value))
    if not match:
        raise InputError(source, f"well {value!r} is not a well name like 'A01' or 'C3'")
    letters, col = match.groups()
    if int(col) < 1:
        raise InputError(source, f"well {value!r} has column 0; columns start at 1")
    return well_name(row_index(letters), int(col))
