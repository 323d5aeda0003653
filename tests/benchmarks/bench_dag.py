"""How long `snakemake -n` takes to build the DAG of a 2,000-plate sheet (target: < 60 s).

Two sheets, each in a temporary copy of the workflow with the demo config:
- simulate: 2,000 simulated plates (no files exist yet; the DAG is built from the sheet alone);
- plates:   2,000 real-screen plates in the rxrx layout, each with a plate map and 2 wells x
            5 channels of (empty) image files, which ingest lists as inputs at DAG time.

Run:  .venv/bin/python tests/benchmarks/bench_dag.py [--plates 2000]
Last line: `dag 2000 plates: <s> s` (the slower of the two).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
from helpers_workflow import Project, job_counts, make_project  # noqa: E402


def simulate_sheet(project: Project, plates: list[str]) -> None:
    root = project.config()["simulate"]["root"]
    project.write_sheet(pd.DataFrame({
        "plate": plates, "batch": [f"B{i % 20:02d}" for i in range(len(plates))],
        "layout": "rxrx", "path": f"{root}/images",
        "platemap": [f"{root}/platemaps/{p}.csv" for p in plates], "pattern": "",
    }))


def screen_sheet(project: Project, plates: list[str]) -> None:
    """rxrx folders `raw/<plate>/<well>_s1_w<k>.png` with empty files, and a plate map."""
    channels = [c["token"] for c in project.config()["channels"]]
    raw = project.root / "raw"
    for plate in plates:
        folder = raw / plate
        folder.mkdir(parents=True)
        for well in ("A01", "A02"):
            for token in channels:
                (folder / f"{well}_s1_w{token}.png").touch()
        (raw / f"{plate}.csv").write_text("well,perturbation,is_control\nA01,DMSO,true\nA02,c1,false\n")
    project.write_sheet(pd.DataFrame({
        "plate": plates, "batch": [f"B{i % 20:02d}" for i in range(len(plates))],
        "layout": "rxrx", "path": "raw", "platemap": [f"raw/{p}.csv" for p in plates],
        "pattern": "",
    }))
    project.update_config({"source": "plates", "labels": {"biology": None}})  # maps: no label


def time_dry_run(project: Project) -> tuple[float, dict[str, int]]:
    started = time.perf_counter()
    run = project.snakemake("-n", "--quiet", "rules", timeout=1800)
    return time.perf_counter() - started, job_counts(run.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plates", type=int, default=2000)
    args = parser.parse_args()
    plates = [f"X{i:05d}" for i in range(args.plates)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_dag_") as tmp:
        for name, make_sheet in (("simulate", simulate_sheet), ("plates", screen_sheet)):
            project = make_project(Path(tmp) / name, overrides={})
            # the full demo config, not the tiny test one
            project.config_path.write_text((Path(__file__).resolve().parents[2] / "config" /
                                            "config.yaml").read_text())
            started = time.perf_counter()
            make_sheet(project, plates)
            setup = time.perf_counter() - started
            seconds, counts = time_dry_run(project)
            load = os.getloadavg()[0]
            if counts.get("embed_plate") != args.plates:
                raise SystemExit(f"{name}: expected {args.plates} embed_plate jobs, got {counts}")
            rows.append((name, setup, seconds, sum(counts.values()), load))
    # the machine's load matters: on a shared 2-core machine a load of 8 makes it ~4x slower
    print(f"{'sheet':<10} {'setup s':>8} {'dry run s':>10} {'jobs':>7} {'load 1 min':>11}")
    for name, setup, seconds, jobs, load in rows:
        print(f"{name:<10} {setup:>8.1f} {seconds:>10.1f} {jobs:>7} {load:>11.1f}")
    print(f"dag {args.plates} plates: {max(r[2] for r in rows):.1f} s")


if __name__ == "__main__":
    main()
