"""Write-to-temporary-then-rename, so a crash never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On any exception the temporary file (or folder) is removed and an existing ``path``
    from an earlier run is left untouched. The temporary name starts with '.' and ends in
    '.partial' so it is never mistaken for a finished output. The finished output gets the
    mode a plain ``open()`` (``os.makedirs``) would give it under the process umask, not the
    0600 (0700) of ``tempfile``: collaborators on a shared file system can read results when
    the umask lets them.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(final)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir:
            os.chmod(tmp, 0o777 & ~process_umask())
            if final.exists():
                old = final.with_name(f".{final.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
        else:
            _fsync_file(tmp)
            os.chmod(tmp, 0o666 & ~process_umask())
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


@functools.cache
def process_umask() -> int:
    """The process umask, read once. Linux reports it in /proc/self/status, which reads it
    without changing it; elsewhere it is set and restored at once (``os.umask`` has no read-only
    form), which is done only on the first call."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_partials(final: Path) -> None:
    """Delete temporaries of ``final`` left by a killed earlier run (SIGKILL skips cleanup)."""
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.partial"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
