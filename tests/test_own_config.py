"""Your own config: it means what it says, reruns redo only what changed, and mistakes stop the
dry run (issue 14: canonical job parameters, a user config replacing the demo's, checks of the
config against the plate sheet, plate maps and profile table).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers_workflow import Project, copy_project, make_project

from phenoica.config import canonical, normalize_numbers, validate_config

REPO = Path(__file__).resolve().parents[1]

#: Every target of the workflow: the main pipeline, identifiability and the synthetic benchmark,
#: so that every rule with params is in the DAG.
ALL_TARGETS = ("all", "identifiability", "synthetic_benchmark")


def reordered(value):
    """``value`` with the keys of every mapping in reverse order (lists keep theirs)."""
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    return value


# ---------------------------------------------------------------- 1. canonical job parameters


def test_canonical_sorts_keys_and_keeps_list_order():
    a = canonical({"b": (1, 2), "a": {"z": 1.5, "y": {3, 1}}, "c": [{"token": "2", "name": "ER"}]})
    b = canonical({"c": [{"name": "ER", "token": "2"}], "a": {"y": {1, 3}, "z": 1.5}, "b": [1, 2]})
    assert repr(a) == repr(b) == ("{'a': {'y': [1, 3], 'z': 1.5}, 'b': [1, 2], "
                                  "'c': [{'name': 'ER', 'token': '2'}]}")
    assert canonical([3, 1, 2]) == [3, 1, 2]  # a list's order means something
    numpy = pytest.importorskip("numpy")
    assert repr(canonical({"k": numpy.float32(0.5), "n": numpy.int64(3)})) == "{'k': 0.5, 'n': 3}"


def test_numbers_take_the_type_of_their_schema_key():
    config = validate_config({"train": {"grad_clip": 1, "epochs": 8.0, "nproc": 2.0},
                              "identifiability": {"ica_components": 0.5, "linear_ridge": 2,
                                                  "weight_decays": [0, 0.05]},
                              "postprocess": {"methods": {"pca": {"n_components": 32.0}}}})
    assert repr(config["train"]["grad_clip"]) == "1.0"      # number
    assert repr(config["train"]["epochs"]) == "8"           # integer
    assert repr(config["train"]["nproc"]) == "2"            # auto or an integer
    assert repr(config["identifiability"]["ica_components"]) == "0.5"  # a share stays a share
    assert repr(config["identifiability"]["linear_ridge"]) == "2.0"
    assert repr(config["identifiability"]["weight_decays"]) == "[0.0, 0.05]"
    # a method's parameters are free-form: left as written
    assert repr(config["postprocess"]["methods"]["pca"]["n_components"]) == "32.0"
    assert normalize_numbers(True, {"type": "number"}) is True


def test_every_rule_param_is_canonical():
    """Every ``params:`` value of every rule file goes through canonical(...), so that a new
    rule cannot bring back reruns on a reordered config."""
    import re

    problems = []
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not re.match(r"^\s*params:\s*$", line):
                continue
            indent = len(line) - len(line.lstrip()) + 4
            for entry in lines[i + 1:]:
                if entry.strip() and len(entry) - len(entry.lstrip()) < indent:
                    break
                if len(entry) - len(entry.lstrip()) == indent and entry.strip():
                    value = entry.strip().split("=", 1)[1]
                    if not (value.startswith("canonical(")
                            or value.startswith("lambda wildcards: canonical(")):
                        problems.append(f"{path.name}: {entry.strip()}")
    assert not problems, problems


def touch_all_outputs(project: Project, *targets: str) -> None:
    """Make every output of ``targets`` exist (empty files, folders) and let ``snakemake --touch``
    record each job's metadata (params, inputs, code) as if the jobs had run: a completed run in
    seconds, to ask what a rerun would plan."""
    for job in project.dry_run(*targets):
        for out in job.output:
            path = project.root / out
            if Path(out).suffix:  # every file output has a suffix; the folder outputs none
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            else:
                path.mkdir(parents=True, exist_ok=True)
    # --forceall: every job "runs" (is touched), so that each one's metadata is recorded
    project.snakemake("--touch", "--forceall", "--cores", "1", *targets)
    assert any((project.root / ".snakemake" / "metadata").iterdir())
    assert project.dry_run(*targets) == [], "the touched run should be complete"


def test_a_reordered_config_plans_nothing_for_any_rule(tmp_path):
    """Every config section (and every mapping in it) written in reverse key order: the same
    settings, so no rule of any target reruns. Before canonical params, ingest, training,
    embedding and everything downstream reran ('Params have changed')."""
    project = make_project(tmp_path / "p")
    touch_all_outputs(project, *ALL_TARGETS)
    # with the settings the schema fills in written out, so that their order is reversed too
    full = validate_config(project.config())
    project.config_path.write_text(yaml.safe_dump(reordered(full), sort_keys=False))
    jobs = project.dry_run(*ALL_TARGETS)
    assert jobs == [], [f"{job}: {job.reason}" for job in jobs]


def test_a_number_spelled_differently_plans_nothing(tmp_path):
    """``1`` for a number key whose default is ``1.0`` and ``8.0`` for an integer key are the same
    settings: the schema normalises them when the config loads."""
    project = make_project(tmp_path / "p")
    touch_all_outputs(project, "all")
    project.update_config({"train": {"grad_clip": 1, "epochs": 1.0}, "scores": {"margin": 2},
                           "benchmark": {"probe_c_l2": 1}})
    assert project.dry_run("all") == []
    project.update_config({"scores": {"margin": 3}})  # a real change still reruns
    assert {job.rule for job in project.dry_run("all")} >= {"score_separation", "collect_results"}


@pytest.mark.slow
def test_a_reordered_config_reruns_nothing_after_a_real_run(reference_run, tmp_path):
    """The reviewer's case on a completed run: the same config in another key order (as
    ``--replace-workflow-config`` produces) plans no job."""
    project = copy_project(reference_run, tmp_path / "p")
    full = validate_config(project.config())
    (project.root / "mine.yaml").write_text(yaml.safe_dump(reordered(full), sort_keys=False))
    jobs = project.dry_run("--configfile", "mine.yaml")
    assert jobs == [], [f"{job}: {job.reason}" for job in jobs]
