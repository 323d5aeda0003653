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
from phenoica.errors import ConfigError
from phenoica.preflight import (
    DEFAULT_MIN_CONTROLS,
    PER_BATCH_CONTROL_METHODS,
    PROFILE_OBS_COLUMNS,
    DataChecks,
    platemap_counts,
    platemap_obs_columns,
    read_header,
)

REPO = Path(__file__).resolve().parents[1]

#: Every target of the workflow (the main pipeline, identifiability, the synthetic benchmark and
#: the validation controls), so that every rule with params is in the DAG.
ALL_TARGETS = ("all", "identifiability", "synthetic_benchmark", "validation")


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
                              "identifiability": {"k": 8.0, "linear_ridge": 2,
                                                  "weight_decays": [0, 0.05]},
                              "postprocess": {"methods": {"pca": {"n_components": 32.0}}}})
    assert repr(config["train"]["grad_clip"]) == "1.0"      # number
    assert repr(config["train"]["epochs"]) == "8"           # integer
    assert repr(config["train"]["nproc"]) == "2"            # auto or an integer
    assert repr(config["identifiability"]["k"]) == "8"  # "stable" or an integer
    assert repr(config["identifiability"]["linear_ridge"]) == "2.0"
    assert repr(config["identifiability"]["weight_decays"]) == "[0.0, 0.05]"
    # a method's parameters are free-form: left as written
    assert repr(config["postprocess"]["methods"]["pca"]["n_components"]) == "32.0"
    assert normalize_numbers(True, {"type": "number"}) is True


def test_every_rule_param_is_canonical():
    """Every ``params:`` value of every rule file goes through canonical(...), so that a new
    rule cannot bring back reruns on a reordered config; and none spells a path of the results
    folder (Snakemake fills <results>/<logs> into input, output and log paths, not params: a
    param path is built from RESULTS, the configured folder)."""
    import re

    problems = []
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not re.match(r"^\s*params:\s*$", line):
                continue
            indent = len(line) - len(line.lstrip()) + 4
            entries: list[str] = []  # one per param, continuation lines (snakefmt) joined
            for entry in lines[i + 1:]:
                if entry.strip() and len(entry) - len(entry.lstrip()) < indent:
                    break
                if re.match(r"^\s*\w+=", entry) and len(entry) - len(entry.lstrip()) == indent:
                    entries.append(entry.strip())
                elif entry.strip() and entries:
                    entries[-1] += " " + entry.strip()
            for entry in entries:
                value = entry.split("=", 1)[1]
                if not (value.startswith("canonical(") or value.startswith("lambda wildcards: canonical(")):
                    problems.append(f"{path.name}: {entry}")
                if re.search(r"<results>|<logs>|[\"']results/|[\"']logs/", value):
                    problems.append(f"{path.name}: a results path in params: {entry}")
    assert not problems, problems


def write_platemap(path: Path, wells: int = 12, controls: int = 4, extra: str = "mechanism") -> None:
    """A plate map like the simulator's: ``wells`` wells, the first ``controls`` of them DMSO."""
    lines = [f"well,perturbation,is_control,{extra}"]
    for i in range(wells):
        control = i < controls
        lines.append(f"A{i + 1:02d},{'DMSO' if control else f'p{i % 3}'},{str(control).lower()},"
                     f"{'none' if control else f'moa{i % 2}'}")
    path.write_text("\n".join(lines) + "\n")


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
            if path.parent.name == "platemaps":  # the dry run reads the plate maps
                write_platemap(path)
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
    assert (project.results() / "data.yaml").is_file()  # the run recorded its data
    # the dry-run checks predict the wells' obs columns from the plate maps' header
    import anndata

    model = project.config()["model"]["id"]
    obs = anndata.read_h5ad(project.results() / "embeddings" / model / "wells.h5ad", backed="r").obs
    header = read_header(project.results() / "simulated" / "platemaps" / "P01.csv")
    assert platemap_obs_columns(header) == set(obs.columns)
    full = validate_config(project.config())
    (project.root / "mine.yaml").write_text(yaml.safe_dump(reordered(full), sort_keys=False))
    jobs = project.dry_run("--configfile", "mine.yaml")
    assert jobs == [], [f"{job}: {job.reason}" for job in jobs]


# ------------------------------------------------- 2. your own config replaces the demo's


def own_project(root: Path, *, batches=("B1", "B2"), wells: int = 12, controls: int = 6,
                extra: str = "moa", tokens=("1", "2", "3", "4", "5")) -> Project:
    """A copy of the workflow with plates of one's own (rxrx layout, empty image files, one
    site per well) and ``my.yaml``, a complete config for them: the two methods pca and pca_ica,
    every other key from the schema's defaults."""
    project = make_project(root)
    raw = root / "raw"
    rows = ["plate\tbatch\tlayout\tpath\tplatemap"]
    for i, batch in enumerate(batches):
        plate = f"P{i + 1}"
        (raw / plate).mkdir(parents=True)
        for w in range(wells):
            for token in tokens:
                (raw / plate / f"A{w + 1:02d}_s1_w{token}.png").touch()
        write_platemap(raw / f"{plate}.csv", wells=wells, controls=controls, extra=extra)
        rows.append(f"{plate}\t{batch}\trxrx\traw\traw/{plate}.csv")
    (root / "my_plates.tsv").write_text("\n".join(rows) + "\n")
    write_config(project, {"source": "plates", "plates": "my_plates.tsv",
                           "postprocess": {"methods": {"pca": {"n_components": 4},
                                                       "pca_ica": {"n_components": 4}}}})
    return project


def write_config(project: Project, config: dict, name: str = "my.yaml") -> None:
    (project.root / name).write_text(yaml.safe_dump(config))


def failed_dry_run(project: Project, *args: str) -> str:
    run = project.snakemake("-n", *args, check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert "Job stats" not in output, "the dry run planned jobs before it failed"
    return output


def test_own_config_replaces_the_demo_config(tmp_path):
    """A config given with --configfile is complete on its own: two methods plan exactly those two
    (merged over the demo's config/config.yaml it planned the demo's as well), and keys it leaves
    out take the schema's defaults (labels.biology: null), not the demo's (mechanism)."""
    project = own_project(tmp_path / "p")
    jobs = project.dry_run("--configfile", "my.yaml")
    assert sorted(j.wildcards["method"] for j in jobs if j.rule == "postprocess") == ["pca", "pca_ica"]
    assert not {"simulate_plate", "simulate_design"} & {j.rule for j in jobs}
    # several --configfile files are merged in order: the second one adds keys, mappings merge
    write_config(project, {"postprocess": {"fit_on": "controls"}}, name="extra.yaml")
    jobs = project.dry_run("--configfile", "my.yaml", "extra.yaml")
    assert sorted(j.wildcards["method"] for j in jobs if j.rule == "postprocess") == ["pca", "pca_ica"]


# ------------------------------------------- 3. what the config names is checked in the dry run


def test_a_label_column_the_plate_maps_lack_fails_the_dry_run(tmp_path):
    """The reviewer's case: labels.biology left at the demo's 'mechanism' passed -n, ingest and
    embedding and failed at score_separation without naming the key."""
    project = own_project(tmp_path / "p")
    config = yaml.safe_load((project.root / "my.yaml").read_text())
    write_config(project, {**config, "labels": {"biology": "mechanism"}})
    output = failed_dry_run(project, "--configfile", "my.yaml")
    assert "config key labels.biology: column 'mechanism' is in none of the plate maps of the plate " \
           "sheet my_plates.tsv" in output
    assert "raw/P1.csv gives the columns" in output and "'moa'" in output


def test_one_batch_fails_before_any_embedding(tmp_path):
    project = own_project(tmp_path / "p", batches=("B1", "B1"))
    output = failed_dry_run(project, "--configfile", "my.yaml")
    assert ("config key plates: held-out-batch benchmarks (rule benchmark_generalization, part of "
            "the default target) need at least 2 batches; the plate sheet my_plates.tsv has 1 ('B1'"
            in output)
    # without the benchmarks one batch is fine: the embed target plans ingest and embedding
    rules = {job.rule for job in project.dry_run("embed", "--configfile", "my.yaml")}
    assert {"ingest_plate", "embed_plate", "collect_wells"} <= rules
    assert not {"postprocess", "score_separation", "benchmark_generalization"} & rules


def test_a_channel_token_no_file_carries_fails_the_dry_run(tmp_path):
    project = own_project(tmp_path / "p", tokens=("1", "2", "3", "4", "6"))
    output = failed_dry_run(project, "ingest", "--configfile", "my.yaml")
    assert "config key channels: no image file of plate P1 (plate sheet my_plates.tsv, folder raw/P1, " \
           "layout rxrx) carries the channel token(s) '5' (Mito); its file names carry the tokens " \
           "['1', '2', '3', '4', '6']" in output


def test_a_profile_column_the_table_lacks_fails_the_dry_run(tmp_path):
    project = make_project(tmp_path / "p")
    table = project.root / "profiles.csv"
    table.write_text("Metadata_Plate,Metadata_Well,Metadata_Week,Metadata_Compound,f1,f2\n"
                     "P1,A01,W1,DMSO,0.1,0.2\nP1,A02,W1,c1,0.3,0.1\n")
    write_config(project, {"source": "profiles", "profiles": {"path": "profiles.csv"}})
    output = failed_dry_run(project, "--configfile", "my.yaml")
    assert "config key profiles.batch_col: column 'Metadata_Batch' is not in profiles.csv" in output
    assert "'Metadata_Week'" in output  # what the table has


# The checks one by one, in-process (what the dry runs above wire into the rules).


def data_checks(tmp_path: Path, maps: dict[str, tuple[str, int, int, str]], **config) -> DataChecks:
    """DataChecks over plates ``{plate: (batch, wells, controls, extra column)}`` and a config of
    the schema's defaults with ``config``'s sections merged in."""
    rows = []
    for plate, (batch, wells, controls, extra) in maps.items():
        write_platemap(tmp_path / f"{plate}.csv", wells=wells, controls=controls, extra=extra)
        rows.append({"plate": plate, "batch": batch, "layout": "rxrx", "path": str(tmp_path),
                     "platemap": str(tmp_path / f"{plate}.csv")})
    full = validate_config({"plates": "sheet.tsv", **config})
    return DataChecks(full, rows)


def test_checks_name_the_key_the_file_and_what_was_found(tmp_path):
    two = {"P1": ("B1", 12, 6, "moa"), "P2": ("B2", 12, 6, "dose_um")}
    with pytest.raises(ConfigError, match=r"config key labels\.dose: column 'dose_um' is missing from 1 "
                                          r"of the 2 plate maps of the plate sheet sheet\.tsv: .*P1\.csv"):
        data_checks(tmp_path, two, labels={"dose": "dose_um"}).benchmark("pca")
    with pytest.raises(ConfigError, match=r"config key report\.color\[1\]: column 'dose' is in none"):
        data_checks(tmp_path, two, report={"color": ["batch", "dose"]}).figures()
    with pytest.raises(ConfigError, match=r"report\.color\[1\]: column 'moa' is missing from 1"):
        data_checks(tmp_path, two, report={"color": ["batch", "moa"]}).figures()
    data_checks(tmp_path, two, labels={"biology": None}).scores()  # perturbation: always there


def test_wells_per_fit_are_checked(tmp_path):
    maps = {"P1": ("B1", 12, 2, "moa"), "P2": ("B2", 12, 0, "moa")}
    methods = {"pca": {"n_components": 20}, "tvn": {}}
    checks = data_checks(tmp_path, maps, postprocess={"methods": methods})
    checks.postprocess("pca")  # 24 wells for 20 components
    with pytest.raises(ConfigError, match=r"postprocess\.methods\.pca\.n_components: 20 components need "
                                          r"at least 21 wells to fit on; .*without batch 'B1' gives at "
                                          r"most 12 \(wells in the plate maps of sheet\.tsv: 12 on P2\)"):
        checks.benchmark("pca")
    with pytest.raises(ConfigError, match=r"postprocess\.methods\.tvn: method 'tvn' corrects every batch "
                                          r"with its own control wells and needs at least 2 per batch "
                                          r"\(min_controls\); .*give 0 in batch 'B2'"):
        checks.postprocess("tvn")
    controls = data_checks(tmp_path, maps, postprocess={"fit_on": "controls",
                                                         "methods": {"pca": {"n_components": 4}}})
    with pytest.raises(ConfigError, match=r"fit_on 'controls' gives at most 2 \(control wells in the "
                                          r"plate maps of sheet\.tsv: 2 on P1, 0 on P2\)"):
        controls.postprocess("pca")
    unknown = data_checks(tmp_path, maps, postprocess={"fit_on": "train_batches", "train_batches": ["B9"]})
    with pytest.raises(ConfigError, match=r"config key postprocess\.train_batches: .*\['B9'\] are not "
                                          r"in the plate sheet sheet\.tsv \(its batches: \['B1', 'B2'\]\)"):
        unknown.postprocess("pca")


def test_a_plate_map_without_controls_names_ingest_control_values(tmp_path):
    (tmp_path / "P1.csv").write_text("well,perturbation\nA01,DMSO\nA02,c1\n")
    row = {"plate": "P1", "batch": "B1", "layout": "rxrx", "path": str(tmp_path),
           "platemap": str(tmp_path / "P1.csv")}
    with pytest.raises(ConfigError, match=r"config key ingest\.control_values: plate map .*P1\.csv has no "
                                          r"control column .*columns found: \['well', 'perturbation'\]"):
        DataChecks(validate_config({"plates": "s.tsv"}), [row]).ingest(row)
    config = validate_config({"plates": "s.tsv", "ingest": {"control_values": ["DMSO"]}})
    DataChecks(config, [row]).ingest(row)  # the control values say which wells are controls
    assert platemap_counts(row["platemap"], "P1", ["DMSO"]) == (2, 1)


def test_platemap_columns_are_those_read_platemap_gives(tmp_path):
    """The dry run predicts the obs columns of a plate map from its header alone."""
    from phenoica.sheet import read_platemap

    path = tmp_path / "map.csv"
    path.write_text("Metadata_Well,Metadata_broad_sample,Metadata_control_type,Metadata_MOA,Dose (uM),"
                    "Gene/Target\nA01,DMSO,negcon,none,0,x\nA02,c1,trt,moa1,1,y\n")
    header = read_header(path)
    assert set(read_platemap(path).columns) <= platemap_obs_columns(header)
    assert {"moa", "Dose (uM)", "Gene_Target", "control_type"} <= platemap_obs_columns(header)


def test_constants_match_the_code_they_describe():
    from phenoica.postprocess.methods import _CONTROL_DEFAULTS, METHODS
    from phenoica.profiles import CONTRACT_COLUMNS

    assert set(PROFILE_OBS_COLUMNS) == set(CONTRACT_COLUMNS)
    assert DEFAULT_MIN_CONTROLS == _CONTROL_DEFAULTS["min_controls"]
    assert set(PER_BATCH_CONTROL_METHODS) == {name for name, cls in METHODS.items()
                                              if "min_controls" in cls.defaults}


# -------------------------------------------------------- 8. runs that do not collide


def test_a_failed_run_leaves_no_outdated_aggregate(tmp_path):
    """The reviewer's case: after a failed run of changed data, results/phenoica.h5ad (and the
    summary) were still the previous run's, ready to be mistaken for the new ones."""
    project = make_project(tmp_path / "p")
    touch_all_outputs(project, "all")
    aggregates = ["phenoica.h5ad", "scores.tsv", "benchmarks.tsv", "null_rotations.tsv", "summary.txt"]
    assert all((project.results() / name).is_file() for name in aggregates)
    # a corrected plate map: that plate is re-ingested, and ingest fails (the touched image
    # folder is empty), long before collect_results
    write_platemap(project.results() / "simulated" / "platemaps" / "P01.csv", extra="mechanism", wells=11)
    run = project.run(check=False)
    assert run.returncode != 0
    assert "Removed results/phenoica.h5ad" in run.stderr
    assert not [name for name in aggregates if (project.results() / name).exists()]


def test_remove_outdated_outputs_only_when_an_upstream_rule_reruns(tmp_path):
    from phenoica.workflow import remove_outdated_outputs

    outputs = [tmp_path / "phenoica.h5ad", tmp_path / "summary.txt"]
    for path in outputs:
        path.write_text("old")
    assert remove_outdated_outputs(["method_figures", "scores_report"], ["postprocess"], outputs) == []
    assert all(path.exists() for path in outputs)
    removed = remove_outdated_outputs(["embed_plate"], ["embed_plate", "postprocess"], outputs)
    assert removed == [str(path) for path in outputs] and not any(path.exists() for path in outputs)


def test_aggregated_rules_are_the_rules_before_collect_results(tmp_path):
    """The Snakefile's AGGREGATED_RULES: every rule the aggregates of collect_results depend on,
    for images (simulated here) and for a profiles table."""
    import re

    text = (REPO / "Snakefile").read_text()
    listed = set(re.findall(r'"(\w+)"', re.search(r"AGGREGATED_RULES = \[(.*?)\]", text, re.S).group(1)))
    # with a PCA+Rand output, which the rotation null rescores
    project = make_project(tmp_path / "p", overrides={"postprocess": {"methods": {
        "pca_ica": {"n_components": 4}, "pca_rand": {"n_components": 4}}}})
    images = {job.rule for job in project.dry_run("results/phenoica.h5ad")}
    assert images == listed - {"collect_profiles"}
    table = project.root / "profiles.csv"
    table.write_text("Metadata_Plate,Metadata_Well,Metadata_Batch,Metadata_Compound,f1,f2\n"
                     "P1,A01,W1,DMSO,0.1,0.2\nP1,A02,W1,c1,0.3,0.1\n")
    write_config(project, {"source": "profiles", "profiles": {"path": "profiles.csv"}})
    profiles = {job.rule for job in project.dry_run("results/phenoica.h5ad", "--configfile", "my.yaml")}
    assert profiles == listed - {"simulate_design", "simulate_plate", "ingest_plate", "publish_plate", "train_model",
                                 "embed_plate", "collect_wells"}


def test_own_data_and_the_demo_live_side_by_side(tmp_path):
    """The reviewer's case: a config for one's own plates written in the demo's results folder
    planned to retrain and overwrite the demo. A folder that holds the demo's outputs now refuses
    other data; a results folder of its own keeps both."""
    project = own_project(tmp_path / "p")
    touch_all_outputs(project, "all")  # the demo's run (config/config.yaml): results/
    record = (project.results() / "data.yaml").read_text()
    assert "source: \"simulate\"" in record and "data: \"config/plates.tsv\"" in record
    output = failed_dry_run(project, "--configfile", "my.yaml")
    assert ("config key results: the folder results holds the outputs of other data (source "
            "'simulate', plate sheet 'config/plates.tsv'; recorded in results/data.yaml), this "
            "config's are source 'plates', 'my_plates.tsv'. Give this config a results folder of its "
            "own (e.g. results: results_my_plates)") in output
    config = yaml.safe_load((project.root / "my.yaml").read_text())
    write_config(project, {**config, "results": "results_mine"})
    jobs = project.dry_run("--configfile", "my.yaml")
    paths = [path for job in jobs for path in job.output]
    assert paths and all(path.startswith("results_mine/") for path in paths), paths
    logs = project.snakemake("-n", "--configfile", "my.yaml").stdout
    assert "log: results_mine/logs/ingest/P1.log" in logs
    assert project.dry_run() == []  # the demo is untouched and complete
