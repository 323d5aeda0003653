"""How long `snakemake --report` takes on the finished demo (target < 2 minutes, issue 15).

The report embeds every figure the run made: per method the UMAP/PCA preview and attribution
map, the benchmark and score grids and the component galleries (one PNG per shown component).
By default the whole demo (config/config.yaml) runs first in a temporary copy of the workflow
(about 8 minutes on 2 cores, not counted); ``--project DIR`` reuses a finished run instead. The
report is then built ``--repeats`` times, each in a new process, and the median reported.

Run:  .venv/bin/python tests/benchmarks/bench_report.py [--project DIR] [--repeats 3]
Last line: `report: <s> s (<m> MB, <n> figures)` (median wall time; size of the HTML; figures
in it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers_workflow import Project, copy_workflow  # noqa: E402


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a finished demo run (default: run the demo first)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average at start (1/5/15 min): {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="phenoica-bench-report-") as tmp:
        if args.project is None:
            project = Project(Path(tmp) / "demo")
            copy_workflow(project.root)
            started = time.perf_counter()
            project.run(timeout=3600)
            print(f"demo run (not counted): {time.perf_counter() - started:.0f} s", flush=True)
        else:
            project = Project(args.project.resolve())
        html = Path(tmp) / "report.html"
        times = []
        for _ in range(args.repeats):
            html.unlink(missing_ok=True)
            started = time.perf_counter()
            project.snakemake("--report", str(html), timeout=1800)
            times.append(time.perf_counter() - started)
        text = html.read_text(errors="replace")
        figures = text.count("image/png")
        size_mb = html.stat().st_size / 2**20
    print(f"\n{'snakemake --report':<24}{'median s':>10}{'min s':>8}{'max s':>8}{'MB':>8}{'figures':>9}")
    print(f"{'demo':<24}{statistics.median(times):>10.1f}{min(times):>8.1f}{max(times):>8.1f}"
          f"{size_mb:>8.1f}{figures:>9}")
    print(f"load average at end: {load()}; {args.repeats} builds")
    print(f"report: {statistics.median(times):.1f} s ({size_mb:.1f} MB, {figures} figures)")


if __name__ == "__main__":
    main()
