"""The tiny demo through `snakemake --profile slurm` on a real (local) Slurm cluster.

Needs `bash .ci/slurm/up.sh`; skipped without a cluster unless PHENOICA_REQUIRE_SLURM=1. The run
itself (fixture `slurm_run` in conftest.py) happens once per session; one of its embed_plate
jobs is scancelled mid-run (test_scancel_during_embedding_is_retried). CI runs this tier with
`--dist loadfile`: every user of that run is in this module, so one worker runs it once.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers_slurm import group_alive, project_jobs, run_id_of, snakemake_run, wait_for
from helpers_workflow import (
    PHENOICA,
    REPO,
    SLURM_TASK_ENV_LOG,
    SNAKEMAKE,
    assert_complete_files,
    assert_identical_results,
    partial_files,
)

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
    log_path = tmp_path / "snakemake.out"
    with snakemake_run([SNAKEMAKE, "--profile", "slurm", "--verbose"], cwd=project, env=env,
                       log_path=log_path) as run:
        returncode = run.wait(timeout=600)
    output = log_path.read_text()
    assert returncode == 0, output[-4000:]
    assert "command=sacct" in output, "status was not queried with sacct"
    job_ids = {(project / "out" / f"{i}.txt").read_text().strip() for i in (1, 2)}
    assert all(j.isdigit() for j in job_ids) and len(job_ids) == 2  # ran inside Slurm jobs


def _toy_project(tmp_path, snakefile: str, slurm_cluster, *install_options: str):
    """A one-rule project and a home with the Slurm profile as `phenoica profile install slurm`
    writes it for this cluster (its limits read by sinfo/scontrol)."""
    project = tmp_path / "toy"
    project.mkdir()
    (project / "Snakefile").write_text(snakefile)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SNAKEMAKE_"))}
    env.pop("XDG_CONFIG_HOME", None)
    env["HOME"] = str(home)
    install = [PHENOICA, "profile", "install", "slurm", "--partition", slurm_cluster.cpu_partition,
               "--gpu-partition", slurm_cluster.gpu_partition, "--status-wait", "2", *install_options]
    if slurm_cluster.account:
        install += ["--account", slurm_cluster.account]
    done = subprocess.run(install, env=env, capture_output=True, text=True, check=True)
    profile = yaml.safe_load((home / ".config" / "snakemake" / "slurm" / "config.yaml").read_text())
    return project, env, profile, done.stderr


def _node_cpus(partition: str) -> int:
    return max(int(c) for c in subprocess.run(["sinfo", "-h", "-N", "-p", partition, "-o", "%c"],
                                              capture_output=True, text=True, check=True).stdout.split())


def test_installed_profile_fits_the_partition_and_a_greedy_rule_runs(slurm_cluster, tmp_path):
    """The profile asks for no more CPUs than a node has (the old one asked for 8 cores and 4
    CPUs per GPU, and on a 2-CPU node such a job pended for ever with PartitionConfig); a rule
    that wants 16 threads is scaled down to it and runs."""
    snakefile = ('rule all:\n    input: "out/greedy.txt"\n'
                 'rule greedy:\n    output: "out/greedy.txt"\n    threads: 16\n'
                 '    resources: mem_mb=200, runtime=2\n'
                 '    shell: "echo $SLURM_CPUS_PER_TASK > {output}"\n')
    project, env, profile, notes = _toy_project(tmp_path, snakefile, slurm_cluster)
    cpus = _node_cpus(slurm_cluster.cpu_partition)
    assert profile["cores"] == min(8, cpus)
    gpu_cpus = _node_cpus(slurm_cluster.gpu_partition)
    assert profile["set-resources"]["embed_plate"]["cpus_per_gpu"] == min(4, gpu_cpus)
    if cpus < 8:
        assert f"--max-cores lowered from 8 to {cpus}" in notes
    log_path = tmp_path / "snakemake.out"
    with snakemake_run([SNAKEMAKE, "--profile", "slurm"], cwd=project, env=env, log_path=log_path) as run:
        returncode = run.wait(timeout=300)
    assert returncode == 0, log_path.read_text()[-4000:]
    assert int((project / "out" / "greedy.txt").read_text()) == min(8, cpus)


WATCHED = """
from phenoica.slurm import watch_slurm_jobs

onstart:
    watch_slurm_jobs(workflow, interval_s=2)

rule all:
    input: "out/big.txt"

rule big:
    output: "out/big.txt"
    resources: cpus_per_task=64, mem_mb=200, runtime=2
    shell: "echo $SLURM_JOB_ID > {output}"
"""


def test_a_job_that_can_never_start_is_reported_not_waited_on(slurm_cluster, tmp_path):
    """A rule asking for more CPUs than any node has: Slurm keeps its job pending
    (PartitionConfig) for ever; the watcher the workflow starts in onstart explains it and
    cancels it, so the run fails within minutes instead of hanging silently."""
    assert "watch_slurm_jobs(workflow)" in (REPO / "Snakefile").read_text()  # the workflow's wiring
    project, env, _, _ = _toy_project(tmp_path, WATCHED, slurm_cluster)
    log_path = tmp_path / "snakemake.out"
    started = time.monotonic()
    with snakemake_run([SNAKEMAKE, "--profile", "slurm"], cwd=project, env=env, log_path=log_path) as run:
        returncode = run.wait(timeout=400)
    output = log_path.read_text()
    assert returncode != 0, output[-4000:]
    assert "Slurm job" in output and "(rule big) can never start: pending for 'PartitionConfig'" in output
    assert "it asks for 64 CPU(s)" in output and f"at most {_node_cpus(slurm_cluster.cpu_partition)} CPUs" \
        in output, output[-4000:]
    assert output.count("can never start") == 1  # the retries are cancelled without repeating it
    assert time.monotonic() - started < 400
    assert project_jobs(project) == []


def test_an_interrupted_run_leaves_no_snakemake_and_no_slurm_job(slurm_cluster, tmp_path):
    """Ctrl-C of the test suite while a Slurm run is going: the run's Snakemake process group is
    gone and squeue lists none of its jobs afterwards (an orphaned `snakemake --profile slurm`
    used to keep submitting)."""
    snakefile = ('rule all:\n    input: expand("out/{i}.txt", i=[1, 2])\n'
                 'rule slow:\n    output: "out/{i}.txt"\n    resources: mem_mb=200, runtime=10\n'
                 '    shell: "sleep 600; touch {output}"\n')
    project, env, _, _ = _toy_project(tmp_path, snakefile, slurm_cluster, "--max-cores", "1")
    log_path = tmp_path / "snakemake.out"
    with pytest.raises(KeyboardInterrupt):
        with snakemake_run([SNAKEMAKE, "--profile", "slurm"], cwd=project, env=env,
                           log_path=log_path) as run:
            assert wait_for(lambda: project_jobs(project), timeout_s=120), log_path.read_text()[-3000:]
            pgid = run.pid
            submitted = project_jobs(project)
            raise KeyboardInterrupt  # what pytest raises on Ctrl-C
    assert submitted and not group_alive(pgid)
    assert project_jobs(project, run_id_of(log_path.read_text())) == []


def test_scancel_during_embedding_is_retried(slurm_run):
    assert slurm_run.cancelled_job, "no running embed_plate job was seen to scancel"
    assert slurm_run.returncode == 0, slurm_run.output[-6000:]
    by_id = {job["id"]: job for job in slurm_run.jobs}
    cancelled = by_id[slurm_run.cancelled_job]
    assert cancelled["state"].startswith("CANCELLED"), cancelled
    # the same plate's embedding was submitted again and completed
    retries = [job for job in slurm_run.jobs if job["comment"] == slurm_run.cancelled_comment
               and job["id"] != slurm_run.cancelled_job]
    assert [job["state"] for job in retries] == ["COMPLETED"], retries
    # ... asking for more memory: mem_mb x attempt
    first, second = (int(re.match(r"(\d+)", job["mem"]).group(1)) for job in (cancelled, retries[0]))
    assert second == min(2 * first, 8000), (cancelled["mem"], retries[0]["mem"])  # 8000: --max-mem-mb
    # No half-written file under a final name, then or now; nothing partial after the retry.
    assert slurm_run.unreadable_after_cancel is None, slurm_run.unreadable_after_cancel
    assert all(p.name.startswith(".") for p in slurm_run.partials_after_cancel)
    results = slurm_run.project.results()
    assert partial_files(slurm_run.project.root) == []
    assert_complete_files(results)
