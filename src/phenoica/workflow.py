"""Glue between Snakemake rules and package functions.

Every rule runs a two-line script in ``workflow/scripts/`` that calls :func:`run_rule` with one
public function of the package. ``run_rule`` sends the function's logging to the rule's
``log:`` file, sets the thread count for numpy/torch, and records failures in the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

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


def run_rule(smk: Any, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call ``func(*args, **kwargs)`` for a Snakemake job, logging to the job's first log file."""
    log_path = smk.log[0] if len(smk.log) else None
    threads = getattr(smk, "threads", 1)
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
        except Exception:
            log.error("rule %s failed:\n%s", smk.rule, traceback.format_exc())
            raise
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
