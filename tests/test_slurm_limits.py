"""Slurm limits and stuck jobs (phenoica.slurm, `phenoica profile`, `phenoica slurm check`) on
recorded sinfo/scontrol/squeue answers: no cluster needed. The same code against the real
one-node cluster of .ci/slurm/up.sh is in test_slurm.py."""

from __future__ import annotations

import time

import pytest
import yaml

from phenoica import cli, slurm
from phenoica.errors import InputError

# The CI cluster (a 2-CPU node `vm` in partitions cpu and gpu, one untyped GPU) and a larger one:
# partition `big` caps two nodes (64 and 32 CPUs) at 48 CPUs and 200000 MB per node; `down` is down.
SCONTROL = {
    "cpu": "PartitionName=cpu AllowGroups=ALL Default=YES MaxCPUsPerNode=UNLIMITED Nodes=vm "
           "State=UP TotalCPUs=2 DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED",
    "gpu": "PartitionName=gpu AllowGroups=ALL Default=NO MaxCPUsPerNode=UNLIMITED Nodes=vm "
           "State=UP TotalCPUs=2 DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED",
    "big": "PartitionName=big MaxCPUsPerNode=48 Nodes=n[1-2] State=UP MaxMemPerNode=200000 "
           "MaxMemPerCPU=UNLIMITED",
    "down": "PartitionName=down MaxCPUsPerNode=UNLIMITED Nodes=n3 State=DOWN MaxMemPerNode=UNLIMITED",
}
SINFO_NODES = {
    "cpu": "vm|2|23381|gpu:1|idle\n",
    "gpu": "vm|2|23381|gpu:1|idle\n",
    "big": "n1|64|256000|gpu:a100:4(S:0-1),mps:400|mix\nn2|32|128000|(null)|idle\n",
    "down": "n3|16|64000|gpu:2|down*\n",
}


class FakeSlurm:
    """Answers the Slurm commands phenoica.slurm runs; records every command."""

    def __init__(self, squeue: str = ""):
        self.squeue = squeue
        self.calls: list[list[str]] = []

    def __call__(self, command):
        command = list(command)
        self.calls.append(command)
        if command[:3] == ["sinfo", "-h", "-o"]:
            return "cpu*\ngpu\nbig\ndown\n"
        if command[:3] == ["scontrol", "show", "partition"]:
            return SCONTROL[command[3]]
        if command[:3] == ["sinfo", "-h", "-N"]:
            return SINFO_NODES[command[command.index("-p") + 1]]
        if command[0] == "squeue":
            return self.squeue
        if command[0] == "scancel":
            return ""
        raise AssertionError(command)

    def cancelled(self) -> list[str]:
        return [c[1] for c in self.calls if c[0] == "scancel"]


@pytest.fixture
def fake(monkeypatch) -> FakeSlurm:
    runner = FakeSlurm()
    monkeypatch.setattr(slurm, "run_slurm", runner)
    return runner


def test_gres_and_partition_limits(fake):
    assert slurm.parse_gres("gpu:1") == (1, ())
    assert slurm.parse_gres("gpu:a100:4(S:0-1),mps:400") == (4, ("a100",))
    assert slurm.parse_gres("gpu:v100:2,gpu:t4:1") == (3, ("v100", "t4"))
    assert slurm.parse_gres("(null)") == (0, ())
    ci = slurm.partition_limits("cpu")
    assert (ci.max_cpus, ci.max_mem_mb, ci.max_gpus, ci.up) == (2, 23381, 1, True)
    big = slurm.partition_limits("big")
    assert (big.max_cpus, big.max_mem_mb, big.max_gpus, big.gpu_types) == (48, 200000, 4, ("a100",))
    assert not slurm.partition_limits("down").up
    with pytest.raises(InputError, match="no such Slurm partition; the cluster has: cpu, gpu, big, down"):
        slurm.partition_limits("gpus")


def test_profile_requests_are_capped_or_refused_with_the_numbers(fake):
    cpu, gpu = slurm.partition_limits("cpu"), slurm.partition_limits("gpu")
    fitted = slurm.fit_profile(max_cores=8, cpus_per_gpu=4, max_mem_mb=64000, explicit=(),
                               cpu=cpu, gpu=gpu)
    assert (fitted.max_cores, fitted.cpus_per_gpu, fitted.max_mem_mb) == (2, 2, 23381)
    assert fitted.notes == [
        "--max-cores lowered from 8 to 2: the largest node of partition 'cpu' has 2 CPUs",
        "--cpus-per-gpu lowered from 4 to 2: the largest node of partition 'gpu' has 2 CPUs",
        "--max-mem-mb lowered from 64000 to 23381: one job on partitions 'cpu' and 'gpu' gets at "
        "most 23381 MB"]
    with pytest.raises(InputError) as err:
        slurm.fit_profile(max_cores=8, cpus_per_gpu=4, max_mem_mb=1000, explicit={"max_cores", "cpus_per_gpu"},
                          cpu=cpu, gpu=gpu, gpu_model="a100")
    lines = str(err.value).splitlines()
    assert lines[1:] == [
        "  --max-cores 8: the largest node of partition 'cpu' has 2 CPUs; use --max-cores 2 or less",
        "  --cpus-per-gpu 4: the largest node of partition 'gpu' has 2 CPUs; use --cpus-per-gpu 2 or less",
        "  --gpu-model a100: partition 'gpu' has GPU types ['(untyped)']"]
    big = slurm.partition_limits("big")
    assert slurm.fit_profile(max_cores=8, cpus_per_gpu=4, max_mem_mb=64000, explicit=(), cpu=big,
                             gpu=big, gpu_model="a100").notes == []
    with pytest.raises(InputError, match="partition 'cpu' has no GPUs"):
        nogpu = slurm.PartitionLimits("cpu", "UP", (), max_cpus=2, max_mem_mb=1000, max_gpus=0)
        slurm.fit_profile(max_cores=2, cpus_per_gpu=2, max_mem_mb=1000, explicit=(), cpu=nogpu, gpu=nogpu)
    down = slurm.fit_profile(max_cores=2, cpus_per_gpu=2, max_mem_mb=1000, explicit=(), cpu=cpu,
                             gpu=slurm.partition_limits("down"))
    assert any("partition 'down' (DOWN)" in note and "will not start" in note for note in down.notes)


def test_profile_command_caps_defaults_and_refuses_explicit_requests(fake, capsys):
    args = ["profile", "show", "slurm", "--partition", "cpu", "--gpu-partition", "gpu"]
    assert cli.main(args) == 0
    out = capsys.readouterr()
    profile = yaml.safe_load(out.out)
    assert profile["cores"] == 2 and profile["resources"]["mem_mb"] == 23381
    assert profile["set-resources"]["embed_plate"]["cpus_per_gpu"] == 2
    assert profile["set-threads"]["train_model"] == 2
    assert "--max-cores lowered from 8 to 2" in out.err
    assert cli.main([*args, "--max-cores", "8", "--cpus-per-gpu", "3"]) == 2
    err = capsys.readouterr().err
    assert "--max-cores 8: the largest node of partition 'cpu' has 2 CPUs; use --max-cores 2 or less" in err
    assert "--cpus-per-gpu 3: the largest node of partition 'gpu' has 2 CPUs" in err
    assert cli.main([*args[:4], "nope"]) == 2
    assert "nope: no such Slurm partition" in capsys.readouterr().err
    # away from the cluster: written as asked
    assert cli.main([*args, "--max-cores", "8", "--no-cluster-check"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["cores"] == 8


def test_profile_command_without_slurm_notes_that_nothing_was_checked(monkeypatch, capsys):
    def missing(command):
        raise InputError(command[0], "not found: is this a Slurm login node?")

    monkeypatch.setattr(slurm, "run_slurm", missing)
    assert cli.main(["profile", "show", "slurm", "--partition", "cpu"]) == 0
    out = capsys.readouterr()
    assert yaml.safe_load(out.out)["cores"] == 8
    assert "could not read the cluster's limits (sinfo: not found" in out.err


def _squeue(*rows: tuple[str, ...]) -> str:
    return "".join("|".join(row) + "\n" for row in rows)


PROJECT = "/data/project"
STUCK = _squeue(
    ("11", "cpu", "PartitionConfig", "8", "2000M", "N/A", "rule_plates_ingest", PROJECT),
    ("12", "gpu", "AssocMaxCpuPerJobLimit", "4", "16000M", "gres:gpu:1",
     "rule_embed_plate_wildcards_P01", PROJECT),
    ("13", "cpu", "Priority", "1", "1000M", "N/A", "rule_postprocess", PROJECT),
    ("14", "cpu", "AssocGrpCpuLimit", "1", "1000M", "N/A", "rule_postprocess", PROJECT),
    ("15", "down", "ReqNodeNotAvail, UnavailableNodes:n3", "1", "1000M", "N/A", "rule_collect_wells",
     PROJECT),
    ("16", "big", "ReqNodeNotAvail, UnavailableNodes:n1", "1", "1000M", "N/A", "rule_collect_wells",
     PROJECT),
    ("21", "cpu", "PartitionConfig", "8", "2000M", "N/A", "rule_x", "/data/other"),
)


def test_stuck_jobs_are_explained_and_only_this_projects_are_cancelled(fake):
    fake.squeue = STUCK
    stuck = dict((job.job_id, message) for job, message in slurm.stuck_jobs(workdir=PROJECT))
    assert sorted(stuck) == ["11", "12", "15"]  # not: waiting for priority, group limits, a node
    assert stuck["11"].startswith("Slurm job 11 (rule plates_ingest) can never start: pending for "
                                  "'PartitionConfig' on partition 'cpu'; it asks for 8 CPU(s), "
                                  "memory 2000M; partition 'cpu' (UP): nodes vm (2 CPUs")
    assert "so one job gets at most 2 CPUs, 23381 MB and 1 GPU(s)" in stuck["11"]
    assert "phenoica profile install slurm --force" in stuck["11"]
    assert "(rule embed_plate)" in stuck["12"] and "gres:gpu:1" in stuck["12"]
    assert "partition 'down' (DOWN)" in stuck["15"]

    reports: list[str] = []
    reported: set[str] = set()
    for _ in range(2):  # a second round (the retried jobs) cancels again but reports nothing new
        assert slurm.cancel_stuck_jobs(workdir=PROJECT, report=reports.append, reported=reported) == \
            ["11", "12", "15"]
    assert len(reports) == 3 and fake.cancelled() == ["11", "12", "15"] * 2


def test_slurm_check_command(fake, capsys):
    fake.squeue = STUCK
    assert cli.main(["slurm", "check", "--workdir", PROJECT]) == 1
    assert capsys.readouterr().out.count("can never start") == 3 and not fake.cancelled()
    assert cli.main(["slurm", "check", "--workdir", PROJECT, "--cancel"]) == 1
    assert "cancelled Slurm job(s) 11 12 15" in capsys.readouterr().out
    fake.squeue = ""
    assert cli.main(["slurm", "check"]) == 0


def test_watcher_cancels_stuck_jobs_of_its_folder_and_stops(fake):
    fake.squeue = STUCK
    reports: list[str] = []
    thread = slurm.watch_slurm_jobs(workdir=PROJECT, interval_s=0.01, report=reports.append)
    deadline = time.monotonic() + 10
    while len(fake.cancelled()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    thread.stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert set(fake.cancelled()) == {"11", "12", "15"} and len(reports) == 3


def test_watcher_starts_only_under_the_slurm_executor():
    class Plugin:
        def __init__(self, name):
            self.name = name

    class Workflow:
        def __init__(self, name, main=True):
            self.executor_plugin, self.is_main_process = Plugin(name), main

    assert slurm.watch_slurm_jobs(Workflow("local")) is None
    assert slurm.watch_slurm_jobs(Workflow("slurm", main=False)) is None
