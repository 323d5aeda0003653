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
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler._phenoica = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is emitted, so a redirection made after
    logging was configured (each ``run_rule`` call sends stderr to its rule's log) is followed."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; sys.stderr is used instead
        pass


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None, **kwargs):
    """A tqdm progress bar on stderr. In a log file (not a TTY) it updates every 10 s, so logs
    stay readable; ``PHENOICA_PROGRESS=0`` turns bars off."""
    disable = os.environ.get("PHENOICA_PROGRESS", "1") == "0"
    tty = sys.stderr.isatty()
    bar_class = tqdm if tty else _LogFileBar
    if not tty:
        kwargs.setdefault("ascii", True)
    return bar_class(iterable, desc=desc, total=total, file=sys.stderr, mininterval=0.5 if tty else 10.0,
                     disable=disable, dynamic_ncols=tty, **kwargs)


class _LogFileBar(tqdm):
    """In a log file each refresh is a new line: postfix updates wait for the next timed refresh
    instead of forcing one per iteration."""

    def display(self, msg=None, pos=None):
        # one line per refresh ('\r' redraws are unreadable in a file)
        self.fp.write((msg if msg is not None else self.__str__()) + "\n")
        self.fp.flush()
        return True

    def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s="", refresh=False):
        super().set_postfix_str(s, refresh=False)
