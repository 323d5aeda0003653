"""Frozen transforms (config key ``postprocess.fitted``): apply an earlier run's fits to the
current wells instead of refitting.

``postprocess.fitted`` is either the folder of an earlier run's ``<results>/postprocess/<model>``
(every configured output ``<name>`` is frozen, from ``<folder>/<name>.h5ad``) or a mapping
``output name -> file`` (only those outputs are frozen; the others are refitted). The dry run
checks each file: it exists, it is not this run's own output, and it holds a fit of the same
algorithm. Light imports only (the Snakefile imports this module at every start); ``h5py`` is
imported only when ``postprocess.fitted`` is set, to read the stored method's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..errors import ConfigError

KEY = "postprocess.fitted"


def fitted_files(fitted: str | Mapping[str, str] | None, methods: Mapping[str, object]) -> dict[str, str]:
    """Output name -> stored fit file, from the value of ``postprocess.fitted`` and the configured
    ``postprocess.methods`` ({} when ``fitted`` is null)."""
    if fitted is None or fitted == "" or fitted == {}:
        return {}
    if isinstance(fitted, Mapping):
        unknown = sorted(set(fitted) - set(methods))
        if unknown:
            raise ConfigError(f"config key {KEY}: output name(s) {unknown} are not configured "
                              f"methods (postprocess.methods: {sorted(methods)})")
        return {str(name): str(path) for name, path in sorted(fitted.items())}
    folder = str(fitted)
    if os.path.isfile(folder):
        raise ConfigError(f"config key {KEY}: {folder} is a file; give the folder of an earlier run's "
                          "postprocess/<model>/ outputs, or a mapping output name -> file")
    return {str(name): os.path.join(folder, f"{name}.h5ad") for name in sorted(methods)}


def stored_method_name(path: str) -> str:
    """The algorithm of the fit stored in a postprocess ``.h5ad`` (``uns/method/name``), read
    without loading the AnnData; ConfigError naming the key and the file when there is none."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            node = handle.get("uns/method/state/name") or handle.get("uns/method/name")
            if node is None:
                raise ConfigError(f"config key {KEY}: {path} holds no fitted post-processing method "
                                  "(no uns['method']['state']): is it a postprocess/<model>/<method>.h5ad "
                                  "of an earlier run?")
            value = node[()]
    except OSError as exc:
        raise ConfigError(f"config key {KEY}: {path} is not a readable .h5ad file ({exc})") from exc
    return value.decode() if isinstance(value, bytes) else str(value)


def check_fitted(files: Mapping[str, str], algorithms: Mapping[str, str], own_outputs: Mapping[str, str]) -> None:
    """The dry-run check of ``postprocess.fitted``: each file exists, is not the output it would
    replace (``own_outputs``: output name -> this run's file) and holds a fit of the configured
    algorithm (``algorithms``: output name -> algorithm). All problems in one ConfigError."""
    problems = []
    for name, path in sorted(files.items()):
        if not os.path.isfile(path):
            problems.append(f"{path} (the stored fit of method {name!r}) does not exist")
            continue
        own = own_outputs.get(name)
        if own is not None and os.path.exists(own) and os.path.samefile(path, own):
            problems.append(f"{path} is this run's own output for method {name!r}: copy the earlier "
                            "run's postprocess folder elsewhere (or use another results folder) first")
            continue
        try:
            stored = stored_method_name(path)
        except ConfigError as exc:
            problems.append(str(exc).removeprefix(f"config key {KEY}: "))
            continue
        if stored != algorithms[name]:
            problems.append(f"{path} holds a fit of {stored!r}, but method {name!r} is "
                            f"{algorithms[name]!r} (postprocess.methods.{name})")
    if problems:
        raise ConfigError(f"config key {KEY}: " + "; ".join(problems))
