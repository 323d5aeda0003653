"""The tiny demo through `snakemake --profile slurm` on a real (local) Slurm cluster.

Needs `bash .ci/slurm/up.sh`; skipped without a cluster unless PHENOICA_REQUIRE_SLURM=1. The run
itself (fixture `slurm_run` in conftest.py) happens once per session; one of its embed_plate
jobs is scancelled mid-run (checked in test_crash_determinism.py).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from helpers_workflow import PHENOICA, SLURM_TASK_ENV_LOG, SNAKEMAKE, assert_identical_results

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

GPU_RULES = ("train_model", "embed_plate")


def _sbatch_calls(output: str) -> dict[str, list[str]]:
    """sbatch command lines the executor logged (--verbose), by rule (from --comment)."""
    calls: dict[str, list[str]] = {}
    for line in output.splitlines():
        if "sbatch call: sbatch" not in line:
            continue
        match = re.search(r"--comment '?rule_(\w+?)(?:_wildcards_[^' ]*)?'? ", line)
        assert match, line
        calls.setdefault(match.group(1), []).append(line)
    return calls


def _rule_of(record: dict) -> str:
    return re.sub(r"_wildcards_.*$", "", record["comment"]).removeprefix("rule_")


def test_workflow_completes_through_sbatch(slurm_run):
    assert slurm_run.returncode == 0, slurm_run.output[-6000:]
    assert slurm_run.run_id, "the executor did not report its run ID"
    assert "command=squeue" in slurm_run.output  # the profile's status command
    rules = {_rule_of(job) for job in slurm_run.jobs}
    # every compute rule went through Slurm (grouped per-plate jobs are named after the group)
    assert {"embed_plate", "train_model", "collect_wells", "postprocess"} <= rules, rules
    assert any(r.startswith("plates_") for r in rules), f"no grouped per-plate job: {rules}"
    assert all(job["state"] in ("COMPLETED", "CANCELLED", "CANCELLED+") or
               job["state"].startswith("CANCELLED") for job in slurm_run.jobs), slurm_run.jobs


def test_outputs_equal_a_local_run(slurm_run, reference_run):
    assert slurm_run.returncode == 0
    assert_identical_results(reference_run.results(), slurm_run.project.results(), partial=True)


def test_gpu_rules_request_a_gpu_and_see_cuda_visible_devices(slurm_run, slurm_cluster):
    calls = _sbatch_calls(slurm_run.output)
    for rule in GPU_RULES:
        assert calls.get(rule), f"no sbatch call logged for {rule}"
        for call in calls[rule]:
            assert "--gpus=1" in call and "--cpus-per-gpu=2" in call, call
            assert f"-p {slurm_cluster.gpu_partition}" in call or \
                f"-p '{slurm_cluster.gpu_partition}'" in call, call
    for rule, rule_calls in calls.items():
        if rule not in GPU_RULES:
            assert all("--gpus" not in call for call in rule_calls), rule_calls

    gpu_jobs = {job["id"]: job for job in slurm_run.jobs if _rule_of(job) in GPU_RULES}
    assert gpu_jobs
    for job in gpu_jobs.values():
        assert job["partition"] == slurm_cluster.gpu_partition
        assert "gpu" in job["tres"], job  # sacct AllocTRES gres/gpu=1, squeue gres
    # The cluster's TaskProlog records each task's environment: the rule ran in job step 0.
    env_log = Path(SLURM_TASK_ENV_LOG)
    assert env_log.exists(), f"{env_log} missing: is this the cluster of .ci/slurm/up.sh?"
    seen = {}
    for line in env_log.read_text().splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if fields.get("job") in gpu_jobs and fields.get("step") == "0":
            seen[fields["job"]] = fields["CUDA_VISIBLE_DEVICES"]
    finished = [j for j, job in gpu_jobs.items() if job["state"] == "COMPLETED"]
    assert finished and all(seen.get(j) not in (None, "unset", "") for j in finished), seen
    # ... and, with no real device behind it, the code fell back to the CPU: the outputs equal
    # the local CPU run's (test_outputs_equal_a_local_run).


def test_cpu_rules_get_memory_and_runtime(slurm_run):
    calls = _sbatch_calls(slurm_run.output)
    for rule in ("collect_wells", "postprocess"):
        for call in calls[rule]:
            assert re.search(r"--mem \d+", call) and re.search(r" -t '?\d+", call), call
            assert "--cpus-per-task=" in call, call


def test_sacct_status_command(slurm_cluster, tmp_path):
    """The executor's other status path: sacct (needs slurmdbd accounting)."""
    if not slurm_cluster.accounting:
        pytest.skip("the cluster has no accounting (up.sh --no-accounting): sacct cannot work")
    home = tmp_path / "home"
    project = tmp_path / "toy"
    project.mkdir()
    (project / "Snakefile").write_text(
        'rule all:\n    input: expand("out/{i}.txt", i=[1, 2])\n'
        'rule step:\n    output: "out/{i}.txt"\n    resources: mem_mb=200, runtime=2\n'
        '    shell: "echo $SLURM_JOB_ID > {output}"\n')
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    install = [PHENOICA, "profile", "install", "slurm", "--partition",
               slurm_cluster.cpu_partition, "--status-command", "sacct", "--status-wait", "2",
               "--max-cores", "1"]
    if slurm_cluster.account:
        install += ["--account", slurm_cluster.account]
    subprocess.run(install, env=env, check=True, capture_output=True)
    run = subprocess.run([SNAKEMAKE, "--profile", "slurm", "--verbose"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "command=sacct" in run.stderr, "status was not queried with sacct"
    job_ids = {(project / "out" / f"{i}.txt").read_text().strip() for i in (1, 2)}
    assert all(j.isdigit() for j in job_ids) and len(job_ids) == 2  # ran inside Slurm jobs
