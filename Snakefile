# phenoica: raw plates -> MAE embeddings -> whitening + ICA -> batch-vs-biology scores and
# held-out-batch benchmarks. All logic lives in the phenoica package; rules are thin.
import time

from snakemake.utils import min_version

from phenoica.slurm import watch_slurm_jobs
from phenoica.workflow import (
    print_summary_if_updated,
    record_results_folder,
    remove_outdated_outputs,
)

min_version("9.0")


# config/config.yaml is the built-in demo, read only when no --configfile is given: a config of
# your own replaces it whole (keys it leaves out take the schema's defaults, never the demo's), so
# its lists and sets (postprocess.methods, benchmark.tasks, channels) mean exactly what they say.
# Several --configfile files are merged in order (later files win key by key).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


WORKFLOW_STARTED = time.time()


include: "workflow/rules/common.smk"


# The rules' paths start with <results>/ and <logs>/: this config's results folder (config key
# results; the demo's is results) and its logs folder, <results>/logs.
pathvars:
    results=RESULTS,
    logs=LOGS,


wildcard_constraints:
    plate=IDENTIFIER,
    model=IDENTIFIER,
    method=METHOD_NAME,
    seed="[0-9]+",


include: "workflow/rules/simulate.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/postprocess.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/null.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/gallery.smk"
include: "workflow/rules/identifiability.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/validation.smk"


rule all:
    default_target: True
    input:
        "<results>/phenoica.h5ad",
        "<results>/scores.tsv",
        "<results>/benchmarks.tsv",
        "<results>/null_rotations.tsv",
        "<results>/summary.txt",
        REPORT_FIGURES,
        GALLERY_FIGURES,


# The rules whose outputs <results>/phenoica.h5ad, the long tables and the summary (collect_results)
# summarise: a run that reruns any of them removes those aggregates first, so that a run that
# fails or stops early (snakemake embed) never leaves the old ones looking current.
AGGREGATED_RULES = [
    "simulate_design",
    "simulate_plate",
    "ingest_plate",
    "publish_plate",
    "train_model",
    "embed_plate",
    "collect_wells",
    "collect_profiles",
    "postprocess",
    "score_separation",
    "benchmark_generalization",
    "rotation_null",
    "collect_results",
]


# At the start of a run (not a dry run): record which data the results folder holds, remove the
# aggregates this run makes outdated; with
# `--profile slurm`, report and cancel this run's jobs that pend for a reason that can never clear
# (e.g. more CPUs than a node has), instead of waiting on them forever.
onstart:
    record_results_folder(RESULTS, RESULTS_DATA)
    if not workflow.touch:
        remove_outdated_outputs(
            [job.rule.name for job in workflow.dag.needrun_jobs()],
            AGGREGATED_RULES,
            rules.collect_results.output,
        )
    watch_slurm_jobs(workflow)


onsuccess:
    print_summary_if_updated(f"{RESULTS}/summary.txt", WORKFLOW_STARTED)
