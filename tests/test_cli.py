"""The `phenoica` command: Slurm profile rendering and installation, and how Snakemake reads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from phenoica import cli
from phenoica.errors import InputError

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PROFILE = REPO / "profiles" / "default" / "config.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def _render(**kwargs) -> dict:
    args = {"account": "lab1", "partition": "cpu", "gpu_partition": "gpu"} | kwargs
    return yaml.safe_load(cli.render_slurm_profile(**args))


def test_slurm_profile_sets_account_partitions_and_gpu_rules():
    profile = _render(cpus_per_gpu=6, jobs=50, group_size=10)
    assert profile["executor"] == "slurm"
    assert profile["jobs"] == 50
    assert profile["retries"] >= 1
    assert profile["default-resources"]["slurm_account"] == "lab1"
    assert profile["default-resources"]["slurm_partition"] == "cpu"
    for rule in cli.GPU_RULES:
        resources = profile["set-resources"][rule]
        assert resources == {"slurm_partition": "gpu", "gpu": 1, "cpus_per_gpu": 6}
        assert profile["set-threads"][rule] == 6
    assert profile["group-components"] == {"plates_simulate": 10, "plates_ingest": 10}
    assert set(profile["groups"].values()) == set(profile["group-components"])
    # squeue: the executor (2.8) waits forever on sacct's "CANCELLED by <uid>"
    assert profile["slurm-status-command"] == "squeue"
    assert "slurm-status-command" not in _render(status_command="auto")
    # a job may ask for all the cores its GPU rule needs
    assert profile["cores"] >= 6


def test_slurm_profile_optional_keys():
    profile = _render(gpu_partition=None, gpu_model="a100", status_command="sacct", account=None)
    assert "slurm_account" not in profile["default-resources"]
    assert profile["set-resources"]["embed_plate"]["slurm_partition"] == "cpu"
    assert profile["set-resources"]["embed_plate"]["gpu_model"] == "a100"
    assert profile["slurm-status-command"] == "sacct"


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"account": "my lab"}, "--account"),
        ({"partition": "../etc"}, "--partition"),
        ({"gpu_partition": "gpu;rm"}, "--gpu-partition"),
        ({"gpu_model": "a 100"}, "--gpu-model"),
        ({"status_command": "qstat"}, "--status-command"),
        ({"cpus_per_gpu": 0}, "--cpus-per-gpu"),
        ({"jobs": -1}, "--jobs"),
    ],
)
def test_slurm_profile_rejects_bad_values(kwargs, option):
    with pytest.raises(InputError) as err:
        _render(**kwargs)
    assert err.value.source == option


def test_workflow_and_slurm_profiles_share_no_top_level_key():
    # Profiles replace each other's top-level keys whole (two default-resources blocks do not
    # merge), so a shared key would silently drop one side's settings.
    workflow = yaml.safe_load(WORKFLOW_PROFILE.read_text())
    slurm = _render(gpu_model="a100", status_command="sacct")
    assert workflow, "workflow profile is empty"
    assert not set(workflow) & set(slurm), set(workflow) & set(slurm)


def test_install_writes_user_profile_and_refuses_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    argv = ["profile", "install", "slurm", "--account", "lab1", "--partition", "cpu",
            "--no-cluster-check"]
    assert cli.main(argv) == 0
    target = tmp_path / ".config" / "snakemake" / "slurm" / "config.yaml"
    assert yaml.safe_load(target.read_text())["default-resources"]["slurm_account"] == "lab1"
    assert not [p for p in target.parent.iterdir() if p.name != "config.yaml"]  # no temp file

    assert cli.main([*argv[:4], "lab2", *argv[5:]]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert "lab1" in target.read_text()

    assert cli.main([*argv[:4], "lab2", *argv[5:], "--force"]) == 0
    assert yaml.safe_load(target.read_text())["default-resources"]["slurm_account"] == "lab2"


def test_install_honours_xdg_config_home_and_dest(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert cli.user_profile_dir("slurm") == tmp_path / "xdg" / "snakemake" / "slurm"
    dest = tmp_path / "somewhere" / "slurm"
    argv = ["profile", "install", "slurm", "--account", "a", "--partition", "p", "--dest", str(dest),
            "--no-cluster-check"]
    assert cli.main(argv) == 0
    assert (dest / "config.yaml").is_file()


def test_bad_identifier_exits_with_message(capsys):
    code = cli.main(["profile", "show", "slurm", "--account", "a b", "--partition", "p"])
    assert code == 2
    assert "--account: Slurm account 'a b' is not a valid identifier" in capsys.readouterr().err


def test_console_script_is_installed(tmp_path):
    exe = Path(sys.executable).with_name("phenoica")
    out = subprocess.run(
        [str(exe), "profile", "show", "slurm", "--account", "a", "--partition", "p", "--no-cluster-check"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert yaml.safe_load(out)["executor"] == "slurm"


TOY_SNAKEFILE = """
rule all:
    input: expand("out/embed/{p}.txt", p=["P1", "P2"])
rule ingest_plate:
    output: "out/ingest/{p}.txt"
    resources: mem_mb=lambda wc, attempt: 1000 * attempt
    shell: "touch {output}"
rule embed_plate:
    input: "out/ingest/{p}.txt"
    output: "out/embed/{p}.txt"
    threads: 2
    shell: "touch {output}"
"""


def test_snakemake_finds_installed_profile_as_typed(tmp_path):
    """`snakemake --profile slurm` with the profile in ~/.config/snakemake/slurm: resources of
    the dry run show the account, partitions and GPU request; the workflow's own mem_mb wins
    over the profile default."""
    home = tmp_path / "home"
    project = tmp_path / "project"
    project.mkdir()
    (project / "Snakefile").write_text(TOY_SNAKEFILE)
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "SNAKEMAKE_PROFILE")}
    env["HOME"] = str(home)
    subprocess.run(
        [str(Path(sys.executable).with_name("phenoica")), "profile", "install", "slurm",
         "--account", "lab1", "--partition", "cpu", "--gpu-partition", "gpu",
         "--cpus-per-gpu", "3", "--no-cluster-check"],
        env=env, check=True, capture_output=True,
    )
    run = subprocess.run(
        [SNAKEMAKE, "--profile", "slurm", "-n"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )
    text = run.stdout + run.stderr
    assert run.returncode == 0, text
    assert "Using profile slurm" in text
    blocks = text.split("rule ")
    embed = next(b for b in blocks if b.startswith("embed_plate:"))
    ingest = next(b for b in blocks if b.startswith("ingest_plate:"))
    assert "slurm_partition=gpu" in embed and "gpu=1" in embed and "cpus_per_gpu=3" in embed
    assert "threads: 3" in embed
    assert "slurm_account=lab1" in ingest and "slurm_partition=cpu" in ingest
    assert "mem_mb=1000" in ingest  # rule resources beat the profile's default-resources


def test_snakemake_reads_the_workflow_profile(tmp_path):
    """The repository's layout (a top-level Snakefile with profiles/default beside it) is one
    where Snakemake finds the workflow profile by itself, from the project root as typed."""
    assert (REPO / "Snakefile").is_file() and WORKFLOW_PROFILE.is_file()
    project = tmp_path / "project"
    (project / "profiles" / "default").mkdir(parents=True)
    (project / "Snakefile").write_text('rule all:\n    shell: "true"\n')
    (project / "profiles" / "default" / "config.yaml").write_text(WORKFLOW_PROFILE.read_text())
    run = subprocess.run([SNAKEMAKE, "-n"], cwd=project, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "workflow specific profile profiles/default" in run.stderr, run.stderr
