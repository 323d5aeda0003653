"""What the Slurm cluster allows, and jobs that wait for something that will never come.

* :func:`partition_limits` reads a partition's limits (``sinfo`` per node, ``scontrol show
  partition``): the most CPUs, memory and GPUs one job can get on one node, and whether the
  partition and its nodes are up. ``phenoica profile install slurm`` caps the profile's requests
  to them, or refuses with the numbers (:func:`fit_profile`).
* :func:`stuck_jobs` finds pending jobs whose reason can never clear on the cluster as it is
  (``PartitionConfig``, ``AssocMaxCpuPerJobLimit`` and the other per-job limits,
  ``BadConstraints``, a down partition, ...), and explains each with the request and the limit.
  The workflow runs :func:`watch_slurm_jobs` beside ``snakemake --profile slurm`` (Snakefile
  ``onstart``): it reports such a job and cancels it, so Snakemake sees it fail instead of
  waiting on it forever; ``phenoica slurm check`` does the same once, by hand.

Every Slurm command goes through :func:`run_slurm`, which tests replace.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .errors import InputError

#: Pending reasons that never clear while the cluster's configuration stays as it is.
NEVER_CLEARS = {
    "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints",
    "InvalidAccount", "InvalidQOS", "DependencyNeverSatisfied", "QOSMinCpuNotSatisfied",
    "QOSMinMemory", "AccountNotAllowed", "QOSNotAllowed",
}
#: Per-job association and QOS limits (``AssocMaxCpuPerJobLimit``, ``QOSMaxMemoryPerJob``, ...)
#: never clear either; group totals (``AssocGrp*``) do when other jobs end.
PER_JOB_LIMIT = re.compile(r"^(Assoc|QOS)Max\w*PerJob\w*$")
#: Reasons that mean "no node to run on": fatal when every node of the partition is down.
NO_NODE = ("ReqNodeNotAvail", "PartitionDown", "PartitionInactive", "NodeDown")
DOWN_STATES = ("down", "drain", "drng", "fail", "inval", "maint", "npc", "unk", "futr", "plnd")

Runner = Callable[[Sequence[str]], str]


def run_slurm(command: Sequence[str]) -> str:
    """Run a Slurm client command and return its stdout; InputError when it is missing or fails."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise InputError(command[0], "not found: is this a Slurm login node?") from exc
    except subprocess.TimeoutExpired as exc:
        raise InputError(command[0], "did not answer within 60 s") from exc
    if done.returncode != 0:
        raise InputError(" ".join(command), f"failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


# --- partition limits --------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeInfo:
    name: str
    cpus: int
    mem_mb: int
    gpus: int
    gpu_types: tuple[str, ...]
    state: str

    @property
    def up(self) -> bool:
        return not self.state.rstrip("*~#!%$@^-+").lower().startswith(DOWN_STATES)


@dataclass(frozen=True)
class PartitionLimits:
    """The most one job can get on one node of a partition (after the partition's per-node caps)."""

    name: str
    state: str                      # the partition's State (UP, DOWN, DRAIN, INACTIVE)
    nodes: tuple[NodeInfo, ...]
    max_cpus: int
    max_mem_mb: int
    max_gpus: int
    gpu_types: tuple[str, ...] = field(default=())

    @property
    def up(self) -> bool:
        return self.state.upper() == "UP" and any(node.up for node in self.nodes)

    def describe(self) -> str:
        node_text = ", ".join(f"{n.name} ({n.cpus} CPUs, {n.mem_mb} MB, {n.gpus} GPU(s), "
                              f"{n.state})" for n in self.nodes[:4])
        more = f" and {len(self.nodes) - 4} more" if len(self.nodes) > 4 else ""
        return f"partition {self.name!r} ({self.state}): nodes {node_text}{more}"


def parse_gres(text: str) -> tuple[int, tuple[str, ...]]:
    """GPU count and types of a node's Gres field (``gpu:1``, ``gpu:a100:4(S:0-1)``, ``(null)``)."""
    count, types = 0, []
    for item in re.split(r",(?![^(]*\))", text or ""):
        parts = re.sub(r"\(.*?\)", "", item).strip().split(":")
        if parts[0] != "gpu" or len(parts) < 2:
            continue
        number = parts[-1]
        if not number.isdigit():
            continue
        count += int(number)
        if len(parts) == 3:
            types.append(parts[1])
    return count, tuple(types)


def parse_scontrol(text: str) -> dict[str, str]:
    """``key=value`` pairs of ``scontrol show ... --oneliner`` (values may not contain spaces)."""
    return dict(re.findall(r"(\w+)=(\S*)", text))


def _number(value: str | None) -> int | None:
    if value is None or not value.strip() or value.upper().startswith("UNLIMITED"):
        return None
    match = re.match(r"(\d+)", value)
    return int(match.group(1)) if match else None


def partition_names(run: Runner | None = None) -> list[str]:
    """The cluster's partitions (the default one first, as sinfo lists it with '*')."""
    run = run or run_slurm
    return list(dict.fromkeys(p.strip().rstrip("*") for p in run(["sinfo", "-h", "-o", "%P"]).split()))


def partition_limits(partition: str, run: Runner | None = None) -> PartitionLimits:
    """Limits of ``partition`` from ``scontrol show partition`` and ``sinfo -N`` (one line per
    node). Raises InputError naming the partition when the cluster does not have it."""
    run = run or run_slurm
    names = partition_names(run)
    if partition not in names:
        raise InputError(partition, f"no such Slurm partition; the cluster has: {', '.join(names)}")
    info = parse_scontrol(run(["scontrol", "show", "partition", partition, "--oneliner"]))
    nodes = []
    for line in run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N|%c|%m|%G|%t"]).splitlines():
        if not line.strip():
            continue
        name, cpus, mem, gres, state = (line.split("|") + [""] * 5)[:5]
        gpus, types = parse_gres(gres)
        nodes.append(NodeInfo(name=name.strip(), cpus=_number(cpus) or 0, mem_mb=_number(mem) or 0,
                              gpus=gpus, gpu_types=types, state=state.strip()))
    nodes = list({n.name: n for n in nodes}.values())  # sinfo -N repeats a node per partition
    max_cpus = max((n.cpus for n in nodes), default=0)
    cap = _number(info.get("MaxCPUsPerNode"))
    if cap is not None:
        max_cpus = min(max_cpus, cap)
    max_mem = max((n.mem_mb for n in nodes), default=0)
    mem_cap = _number(info.get("MaxMemPerNode"))
    if mem_cap is not None:
        max_mem = min(max_mem, mem_cap)
    per_cpu = _number(info.get("MaxMemPerCPU"))
    if per_cpu is not None:
        max_mem = min(max_mem, per_cpu * max_cpus)
    return PartitionLimits(name=partition, state=info.get("State", "UNKNOWN"), nodes=tuple(nodes),
                           max_cpus=max_cpus, max_mem_mb=max_mem,
                           max_gpus=max((n.gpus for n in nodes), default=0),
                           gpu_types=tuple(sorted({t for n in nodes for t in n.gpu_types})))


# --- fitting the profile -----------------------------------------------------------------------

@dataclass
class FittedProfile:
    """The profile's requests after :func:`fit_profile`, and what was changed or is worth saying."""

    max_cores: int
    cpus_per_gpu: int
    max_mem_mb: int
    notes: list[str]


def fit_profile(*, max_cores: int, cpus_per_gpu: int, max_mem_mb: int, explicit: Iterable[str],
                cpu: PartitionLimits, gpu: PartitionLimits, gpu_model: str | None = None) -> FittedProfile:
    """Cap the profile's per-job requests to what one node of each partition offers.

    ``explicit`` names the options the user set (``max_cores``, ``cpus_per_gpu``,
    ``max_mem_mb``): one of those that does not fit is refused (InputError listing every
    problem with the numbers); a default that does not fit is lowered, with a note. A GPU
    partition without GPUs (or without ``gpu_model``) is refused; a partition that is down is
    noted.
    """
    explicit = set(explicit)
    problems: list[str] = []
    notes: list[str] = []
    mem_limit = min(cpu.max_mem_mb, gpu.max_mem_mb) if gpu.name != cpu.name else cpu.max_mem_mb
    mem_where = (f"partitions {cpu.name!r} and {gpu.name!r}" if gpu.name != cpu.name
                 else f"partition {cpu.name!r}")

    def fit(option: str, value: int, limit: int, why: str) -> int:
        flag = "--" + option.replace("_", "-")
        if value <= limit or limit <= 0:
            return value
        if option in explicit:
            problems.append(f"{flag} {value}: {why}; use {flag} {limit} or less")
            return value
        notes.append(f"{flag} lowered from {value} to {limit}: {why}")
        return limit

    max_cores = fit("max_cores", max_cores, cpu.max_cpus,
                    f"the largest node of partition {cpu.name!r} has {cpu.max_cpus} CPUs")
    cpus_per_gpu = fit("cpus_per_gpu", cpus_per_gpu, gpu.max_cpus,
                       f"the largest node of partition {gpu.name!r} has {gpu.max_cpus} CPUs")
    max_mem_mb = fit("max_mem_mb", max_mem_mb, mem_limit,
                     f"one job on {mem_where} gets at most {mem_limit} MB")
    if gpu.max_gpus < 1:
        problems.append(f"partition {gpu.name!r} has no GPUs (gres of its nodes: "
                        f"{sorted({n.name for n in gpu.nodes})} have none); pass --gpu-partition "
                        "with a partition whose nodes have gres gpu")
    elif gpu_model is not None and gpu_model not in gpu.gpu_types:
        problems.append(f"--gpu-model {gpu_model}: partition {gpu.name!r} has GPU types "
                        f"{list(gpu.gpu_types) or ['(untyped)']}")
    for part in {cpu.name: cpu, gpu.name: gpu}.values():
        if not part.up:
            notes.append(f"{part.describe()}: jobs will not start there until it is up")
    if problems:
        raise InputError("Slurm profile", "the requests do not fit the cluster:\n  " + "\n  ".join(problems))
    return FittedProfile(max_cores=max_cores, cpus_per_gpu=cpus_per_gpu, max_mem_mb=max_mem_mb,
                         notes=notes)


# --- jobs that can never start -----------------------------------------------------------------

SQUEUE_FORMAT = "%i|%P|%r|%C|%m|%b|%k|%Z"


@dataclass(frozen=True)
class PendingJob:
    job_id: str
    partition: str
    reason: str
    cpus: str
    min_memory: str
    tres_per_node: str
    comment: str
    workdir: str

    @property
    def rule(self) -> str:
        """The Snakemake rule (or group) from the executor's ``--comment rule_<name>...``."""
        match = re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", self.comment or "")
        return match.group(1) if match else (self.comment or "?")


def pending_jobs(run: Runner | None = None, *, workdir: str | None = None) -> list[PendingJob]:
    """This user's pending jobs (optionally only those submitted from ``workdir``)."""
    run = run or run_slurm
    text = run(["squeue", "--me", "--noheader", "--states=PENDING", f"--format={SQUEUE_FORMAT}"])
    jobs = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 8:
            continue
        job = PendingJob(*[p.strip() for p in parts[:7]], workdir="|".join(parts[7:]).strip())
        if workdir is None or os.path.realpath(job.workdir) == os.path.realpath(workdir):
            jobs.append(job)
    return jobs


def never_clears(reason: str, limits: PartitionLimits | None) -> bool:
    base = reason.split(",")[0].strip()
    if base in NEVER_CLEARS or PER_JOB_LIMIT.match(base):
        return True
    return base in NO_NODE and limits is not None and not limits.up


def explain(job: PendingJob, limits: PartitionLimits | None) -> str:
    """One line: the job, what it asks for, why it waits, what the partition offers, the fix."""
    asks = f"{job.cpus} CPU(s), memory {job.min_memory or '?'}"
    if job.tres_per_node and job.tres_per_node not in ("N/A", "(null)"):
        asks += f", {job.tres_per_node}"
    offer = (f"; {limits.describe()}, so one job gets at most {limits.max_cpus} CPUs, "
             f"{limits.max_mem_mb} MB and {limits.max_gpus} GPU(s)") if limits else ""
    return (f"Slurm job {job.job_id} (rule {job.rule}) can never start: pending for "
            f"{job.reason!r} on partition {job.partition!r}; it asks for {asks}{offer}. Reinstall "
            "the profile (`phenoica profile install slurm --force ...` caps its requests to the "
            "cluster) or lower the rule's resources (config `resources`)")


def stuck_jobs(run: Runner | None = None, *, workdir: str | None = None) -> list[tuple[PendingJob, str]]:
    """Pending jobs (of ``workdir``) whose reason can never clear, each with its explanation."""
    run = run or run_slurm
    found = []
    limits: dict[str, PartitionLimits | None] = {}
    for job in pending_jobs(run, workdir=workdir):
        if job.partition not in limits:
            try:
                limits[job.partition] = partition_limits(job.partition, run)
            except InputError:
                limits[job.partition] = None
        if never_clears(job.reason, limits[job.partition]):
            found.append((job, explain(job, limits[job.partition])))
    return found


def cancel_stuck_jobs(run: Runner | None = None, *, workdir: str | None = None,
                      report: Callable[[str], None] | None = None,
                      reported: set[str] | None = None) -> list[str]:
    """Report (once per rule and reason) and scancel every stuck job; returns their ids."""
    run = run or run_slurm
    cancelled = []
    for job, message in stuck_jobs(run, workdir=workdir):
        key = f"{job.rule}|{job.reason}|{job.cpus}|{job.min_memory}|{job.tres_per_node}"
        if report is not None and (reported is None or key not in reported):
            report(message)
            if reported is not None:
                reported.add(key)
        try:
            run(["scancel", job.job_id])
            cancelled.append(job.job_id)
        except InputError as err:
            if report is not None:
                report(f"could not cancel Slurm job {job.job_id}: {err}")
    return cancelled


def _stderr(message: str) -> None:
    print(f"phenoica: error: {message}", file=sys.stderr, flush=True)


def watch_slurm_jobs(workflow=None, *, workdir: str | None = None, interval_s: float = 10.0,
                     run: Runner | None = None, report: Callable[[str], None] = _stderr
                     ) -> threading.Thread | None:
    """Start a daemon thread that, every ``interval_s``, reports and cancels this run's pending
    jobs that can never start (jobs submitted from ``workdir``, by default the current folder).

    Called from the Snakefile's ``onstart`` with Snakemake's ``workflow``: it starts only in the
    main Snakemake process of a run with the Slurm executor, and returns None otherwise. The
    thread's ``stop`` event ends it.
    """
    if workflow is not None:
        plugin = getattr(workflow, "executor_plugin", None)
        if getattr(plugin, "name", None) != "slurm" or not getattr(workflow, "is_main_process", True):
            return None
    folder = os.path.abspath(workdir or os.getcwd())
    reported: set[str] = set()
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                cancel_stuck_jobs(run, workdir=folder, report=report, reported=reported)
            except InputError:  # squeue unavailable for a moment: try again next round
                continue

    thread = threading.Thread(target=loop, name="phenoica-slurm-watch", daemon=True)
    thread.stop = stop  # type: ignore[attr-defined]
    thread.start()
    return thread
