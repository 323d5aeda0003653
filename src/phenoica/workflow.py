"""Glue between Snakemake rules and package functions.

Every rule runs a two-line script in ``workflow/scripts/`` that calls :func:`run_rule` with one
public function of the package. ``run_rule`` sends the function's logging to the rule's
``log:`` file, sets the thread count for numpy/torch, and records failures in the log.

Failures are shown once. The workflow profile sets ``show-failed-logs``, so Snakemake prints a
failed job's log on the console (also for jobs that ran on Slurm). A user error
(:class:`~phenoica.errors.PhenoicaError`: bad data, sheet or config) ends the log with one
``ERROR`` line per problem, and its Python traceback (with the chained low-level exception) goes
to ``<log>.traceback`` beside it; the script exits with status 1 without printing a traceback.
Any other exception is a bug: its full traceback goes into the log, and so is printed once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import PhenoicaError
from .logs import configure_logging, get_logger


def set_threads(n: int) -> None:
    """Pin BLAS/OpenMP and torch to ``n`` threads (Snakemake sets the env vars for its own
    jobs; torch reads them only at import, so set it explicitly too)."""
    n = max(1, int(n))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)


def traceback_path(log_path: str | os.PathLike) -> str:
    """Where :func:`run_rule` writes the Python traceback of a user error: ``<log>.traceback``."""
    return f"{os.fspath(log_path)}.traceback"


def run_rule(smk: Any, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call ``func(*args, **kwargs)`` for a Snakemake job, logging to the job's first log file.

    On a :class:`~phenoica.errors.PhenoicaError` the log gets the message (one line per
    problem) and :func:`traceback_path` the traceback, and the process exits with status 1
    (``SystemExit``) without printing a traceback; on any other exception the log gets the
    full traceback and the process exits with status 1. Without a log file both propagate.
    """
    log_path = smk.log[0] if len(smk.log) else None
    threads = getattr(smk, "threads", 1)
    if log_path:
        with contextlib.suppress(FileNotFoundError):
            os.remove(traceback_path(log_path))  # from an earlier failure
    stream = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115
    with contextlib.ExitStack() as stack:
        if stream is not None:
            stack.callback(stream.close)
            stack.enter_context(contextlib.redirect_stderr(stream))
        configure_logging()
        set_threads(threads)
        log = get_logger("workflow")
        name = f"{func.__module__}.{func.__qualname__}"
        log.info("rule %s: %s (threads=%s)", smk.rule, name, threads)
        start = time.perf_counter()
        try:
            result = func(*args, **kwargs)
        except PhenoicaError as err:
            if not log_path:
                raise
            trace = traceback_path(log_path)
            with open(trace, "w") as handle:
                handle.write(traceback.format_exc())
            log.error("rule %s failed: %s\n(Python traceback: %s)", smk.rule, err, trace)
            raise SystemExit(1) from None
        except Exception:
            log.error("rule %s failed:\n%s", smk.rule, traceback.format_exc())
            if not log_path:
                raise
            raise SystemExit(1) from None
        finally:
            for handler in logging.getLogger("phenoica").handlers:
                handler.flush()
        log.info("rule %s done in %.1f s", smk.rule, time.perf_counter() - start)
        return result


def print_summary_if_updated(path: str | os.PathLike, since: float) -> bool:
    """Print the run summary at the end of a workflow run, if this run (re)wrote it.

    ``since`` is the wall-clock time the workflow started; an older summary belongs to an earlier
    run (e.g. this run only ingested plates) and is not printed. Returns whether it printed.
    """
    try:
        if os.path.getmtime(path) < since:
            return False
        text = open(path).read()  # noqa: SIM115
    except OSError:
        return False
    print(f"\n{text.rstrip()}\n(summary: {os.fspath(path)})", flush=True)
    return True


def remove_outdated_outputs(planned_rules: Iterable[str], upstream_rules: Iterable[str],
                            outputs: Iterable[str | os.PathLike]) -> list[str]:
    """Remove ``outputs`` (aggregates such as ``results/phenoica.h5ad`` and the run summary) at
    the start of a run that reruns any of ``upstream_rules`` (the rules whose outputs they
    summarise), whatever the run's target: after it they would describe data that changed, and
    a run that fails (or stops at ``snakemake embed``) would leave them in place, ready to be
    mistaken for results of the new data. They come back when a run reaches their rule.

    ``planned_rules``: the rules of the jobs this run will execute. Returns the removed paths.
    """
    if not set(planned_rules) & set(upstream_rules):
        return []
    removed = []
    for path in map(os.fspath, outputs):
        if os.path.lexists(path):
            os.remove(path)
            removed.append(path)
    if removed:
        print(f"Removed {', '.join(removed)}: this run changes what they summarise (a rule before "
              "them reruns); they are rebuilt when the run reaches them.", file=sys.stderr, flush=True)
    return removed


#: File in a results folder that records which data its outputs come from (config key results).
DATA_RECORD = "data.yaml"


def results_data(config: Mapping[str, Any]) -> dict[str, str]:
    """The data a config's outputs come from: its source and the plate sheet (or profiles
    table) it reads. Two configs with the same data may share a results folder (a rerun with
    other settings); with other data they may not."""
    source = str(config["source"])
    path = config["profiles"]["path"] if source == "profiles" else config["plates"]
    return {"source": source, "data": os.path.normpath(str(path)) if path else ""}


def check_results_folder(folder: str | os.PathLike, data: Mapping[str, str]) -> None:
    """Refuse a results folder whose recorded data (:data:`DATA_RECORD`, written by
    :func:`record_results_folder` when a run starts) differs from ``data``: the outputs of two
    data sets would overwrite each other (the same plate names, model id and methods give the
    same file names), and the first run's aggregates would pass for the second's."""
    import yaml

    from .errors import ConfigError

    path = Path(folder) / DATA_RECORD
    try:
        recorded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return
    if not isinstance(recorded, Mapping) or dict(recorded) == dict(data):
        return
    what = "profiles table" if recorded.get("source") == "profiles" else "plate sheet"
    raise ConfigError(
        f"config key results: the folder {os.fspath(folder)} holds the outputs of other data (source "
        f"{recorded.get('source')!r}, {what} {recorded.get('data')!r}; recorded in {path}), this "
        f"config's are source {data['source']!r}, {data['data']!r}. Give this config a results folder "
        f"of its own (e.g. results: results_{_slug(data['data'])}), so that both live side by side, "
        f"or remove {os.fspath(folder)} first")


def record_results_folder(folder: str | os.PathLike, data: Mapping[str, str]) -> None:
    """Write :data:`DATA_RECORD` into ``folder`` (at the start of a run, not a dry run)."""
    from .io.atomic import atomic_write_text

    Path(folder).mkdir(parents=True, exist_ok=True)
    text = "".join(f"{key}: {json.dumps(str(value))}\n" for key, value in data.items())
    atomic_write_text(Path(folder) / DATA_RECORD,
                      "# written by phenoica: the data whose outputs this folder holds (config key results)\n"
                      + text)


def _slug(path: str) -> str:
    stem = Path(path).name.split(".")[0] if path else "mine"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "mine"
