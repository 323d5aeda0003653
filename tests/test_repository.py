"""The repository stands on its own: no tracked file points outside it to the project's old
shared folder, and every data folder says what its files are (a README.md listing each file with
its size and sha256, which must match)."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
from helpers_data import BBBC021, FLY, OPENPHENOM_SHAPES, PHENIX, REPO

DATA_ROOTS = ("tests/data", "config/examples/data")
# a path to the shared folder beside the repository, written as text or built with pathlib
# (the patterns are spelled so that this file does not match them itself)
OUTSIDE = re.compile(r"\.\./shared|/work/share[d]\b|[\"']\.\.[\"']\s*/\s*[\"']shared[\"']")
# README table rows "| path | bytes | sha256 |"; paths under ORIGINALS/ describe a script's inputs
FILE_ROW = re.compile(r"^\|\s*([^|\s]+)\s*\|\s*(\d+)\s*\|\s*([0-9a-f]{64})\s*\|\s*$", re.MULTILINE)
NOT_DATA = {"README.md"}


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True,
                             timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc})")
    return [name for name in out.decode().split("\0") if name]


def outside_mentions(root: Path, files: list[str]) -> list[str]:
    """``file:line: text`` of every line of the text files ``files`` (relative to ``root``) that
    points at the shared folder."""
    found = []
    for name in files:
        path = root / name
        if not path.is_file():  # deleted in the work tree, not yet committed
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary (images, gzip)
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    return found


def test_no_tracked_file_points_at_the_shared_folder():
    files = tracked_files()
    assert "README.md" in files
    found = outside_mentions(REPO, files)
    assert not found, "the repository must stand alone; these lines point outside it:\n" + "\n".join(found)


def test_the_check_finds_each_way_of_naming_the_shared_folder(tmp_path):
    dots = ".."
    lines = [f"path: {dots}/shared/data/x.csv", f"see /work/{'shared'}/DESIGN.md",
             f'ROOT = REPO / "{dots}" / "shared" / "data"', "a shared probe set; tests/data/x"]
    (tmp_path / "f.py").write_text("\n".join(lines) + "\n")
    (tmp_path / "image.tif").write_bytes(b"II*\0" + f"{dots}/shared".encode())  # binary: skipped
    found = outside_mentions(tmp_path, ["f.py", "image.tif"])
    assert [m.split(":")[:2] for m in found] == [["f.py", "1"], ["f.py", "2"], ["f.py", "3"]]


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in NOT_DATA
                  and p.suffix != ".py" and "__pycache__" not in p.parts)


def readme_rows(readme: Path) -> dict[Path, tuple[int, str]]:
    rows = {}
    for rel, size, sha in FILE_ROW.findall(readme.read_text()):
        if not rel.startswith("ORIGINALS/"):
            rows[(readme.parent / rel).resolve()] = (int(size), sha)
    return rows


@pytest.mark.parametrize("root", DATA_ROOTS)
def test_every_data_file_is_described_by_its_folders_readme(root):
    base = REPO / root
    folders = [p for p in base.iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert folders, f"{root}: no data folder"
    for folder in folders:
        assert (folder / "README.md").is_file(), f"{folder.relative_to(REPO)}: no README.md"
    listed: dict[Path, tuple[int, str]] = {}
    for readme in base.rglob("README.md"):
        listed.update(readme_rows(readme))
    files = data_files(base)
    assert files
    for path in files:
        rel = path.relative_to(REPO)
        assert path.resolve() in listed, f"{rel}: not listed (| file | bytes | sha256 |) in a README.md"
        data = path.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == listed[path.resolve()], \
            f"{rel}: differs from its README.md (size, sha256): remake it or update the README"
    assert set(listed) <= {p.resolve() for p in files}, "a README.md lists a file that is not there"


def test_the_tests_data_paths_point_into_the_data_folders():
    for rel in (PHENIX, FLY, BBBC021, OPENPHENOM_SHAPES):
        assert (REPO / rel).exists(), rel
        assert rel.startswith(DATA_ROOTS), rel
