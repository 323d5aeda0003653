"""How long a Snakemake start takes: `snakemake -n` on the demo in a fresh process (target < 3 s).

Every dry run and every cluster job (Snakemake re-reads the Snakefile in each job) pays this
start. The demo config in a temporary copy of the workflow (config/config.yaml, 8 simulated
plates); each start is a new process, repeated, the median reported. `imports` is the time the
Snakefile's own imports take: in a fresh interpreter that has already imported Snakemake, the
timed import of every phenoica module a dry run loads (and the libraries they pull in).

Run:  .venv/bin/python tests/benchmarks/bench_startup.py [--repeats 5]
Last line: `startup: <s> s (imports <t> s)` (medians of the demo's dry run and of the imports).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers_workflow import REPO, Project, make_project, snakemake_modules  # noqa: E402

# what Snakemake has imported before it reads the Snakefile
SNAKEMAKE_MODULES = ("snakemake.cli", "snakemake.api", "snakemake.workflow", "snakemake.dag")
TARGETS = {"demo (all)": (), "+ identifiability, synthetic": ("all", "identifiability", "synthetic_benchmark")}


def time_start(project: Project, *targets: str) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one ``snakemake -n`` in a new process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    project.snakemake("-n", *targets)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _python(code: str, project: Project, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=project.root, env=project.env(),
                          capture_output=True, text=True, check=True, timeout=600)


def time_imports(project: Project, modules: list[str]) -> float:
    """Seconds to import ``modules`` in a fresh interpreter that has imported Snakemake."""
    code = (f"import time\nimport {', '.join(SNAKEMAKE_MODULES)}\nstarted = time.perf_counter()\n"
            f"import {', '.join(modules)}\nprint(time.perf_counter() - started)")
    return float(_python(code, project).stdout.strip())


def slowest_imports(project: Project, modules: list[str], n: int = 8) -> list[tuple[float, str]]:
    """The ``n`` slowest top-level imports among ``modules`` (python -X importtime, cumulative)."""
    code = f"import {', '.join(SNAKEMAKE_MODULES)}\nimport {', '.join(modules)}"
    rows = []
    for line in _python(code, project, "-X", "importtime").stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        # top level only (nested imports are counted in their parent's cumulative time)
        if cumulative.strip().isdigit() and name.startswith(" phenoica"):
            rows.append((int(cumulative) / 1e6, name.strip()))
    return sorted(rows, reverse=True)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        project = make_project(Path(tmp) / "demo", overrides={})
        # the full demo config, not the tiny test one
        project.config_path.write_text((REPO / "config" / "config.yaml").read_text())
        time_start(project)  # warm the file cache and create .snakemake/
        starts = {name: [time_start(project, *targets) for _ in range(args.repeats)]
                  for name, targets in TARGETS.items()}
        # Snakemake's own floor: a one-rule Snakefile in a fresh process
        floor = Project(Path(tmp) / "one_rule")
        floor.root.mkdir()
        (floor.root / "Snakefile").write_text("rule all:\n    output:\n        'x'\n    shell:\n        'touch x'\n")
        starts["one-rule Snakefile (floor)"] = [time_start(floor) for _ in range(args.repeats)]
        loaded = snakemake_modules(project, "-n", "all", "identifiability", "synthetic_benchmark")
        modules = sorted(m for m in loaded if m.split(".")[0] == "phenoica")
        imports = [time_imports(project, modules) for _ in range(args.repeats)]
        slowest = slowest_imports(project, modules)
        load = os.getloadavg()[0]
    # on a loaded machine the wall time grows; the CPU time shows what an idle machine would need
    print(f"{'snakemake -n':<32} {'median s':>9} {'min s':>7} {'max s':>7} {'cpu s':>7}")
    for name, values in starts.items():
        walls = [wall for wall, _ in values]
        print(f"{name:<32} {statistics.median(walls):>9.2f} {min(walls):>7.2f} {max(walls):>7.2f} "
              f"{statistics.median(cpu for _, cpu in values):>7.2f}")
    print(f"{'Snakefile imports':<32} {statistics.median(imports):>9.2f} {min(imports):>7.2f} "
          f"{max(imports):>7.2f}")
    print("\nslowest top-level phenoica imports (cumulative s, -X importtime): "
          + ", ".join(f"{name} {seconds:.2f}" for seconds, name in slowest))
    heavy = sorted({m.split(".")[0] for m in loaded} & {"torch", "timm", "scanpy", "umap", "anndata", "scipy"})
    print(f"heavy libraries loaded: {', '.join(heavy) or 'none'}; load average (1 min): {load:.1f} "
          f"on {os.cpu_count()} cores; {args.repeats} starts each")
    demo = statistics.median(wall for wall, _ in starts["demo (all)"])
    print(f"startup: {demo:.2f} s (imports {statistics.median(imports):.2f} s)")


if __name__ == "__main__":
    main()
