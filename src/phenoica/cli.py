"""The ``phenoica`` command.

``phenoica profile install slurm --account A --partition P [--gpu-partition G]`` writes a
Snakemake profile for snakemake-executor-plugin-slurm to ``~/.config/snakemake/slurm/``, one of
the places Snakemake searches for ``--profile slurm``, so ``snakemake --profile slurm`` works
as typed from the project folder. ``phenoica profile show slurm ...`` prints it instead. Both
read the partitions' limits first (``sinfo``, ``scontrol``; :mod:`phenoica.slurm`): defaults
that ask for more CPUs or memory than one node offers are lowered, and requests given on the
command line that cannot fit are refused with the numbers (``--no-cluster-check`` skips this,
e.g. away from the cluster).

``phenoica slurm check [--workdir DIR] [--cancel]`` lists this user's pending jobs that can never
start (the workflow does this by itself during ``snakemake --profile slurm``).

``phenoica gallery METHOD COMPONENT [--configfile CONFIG] [--out PNG]`` draws one component's
gallery from a finished run's results (:func:`phenoica.gallery.component_gallery`).
"""

from __future__ import annotations

import argparse
import os
import string
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import yaml

from . import __version__, slurm
from .errors import InputError, PhenoicaError
from .identifiers import check_identifier
from .io.atomic import atomic_write_text
from .logs import get_logger

log = get_logger("cli")

PROFILE_NAMES = ("slurm",)
STATUS_COMMANDS = ("squeue", "sacct", "auto")
# Rules that run on a GPU in the Slurm profile (they get gpu=1, cpus_per_gpu, the GPU partition).
# (The synthetic benchmark's small autoencoders train on CPUs.)
GPU_RULES = ("train_model", "embed_plate", "identifiability_train", "identifiability_embed")
#: The per-job requests of the Slurm profile when the command line does not set them; lowered
#: to what the cluster's nodes offer.
DEFAULTS = {"cpus_per_gpu": 4, "max_cores": 8, "max_mem_mb": 64000}


def _gpu_rules_block(gpu_partition: str, gpu_model: str | None, cpus_per_gpu: int) -> str:
    """The profile's set-resources / set-threads entries of every GPU rule."""
    model = f'    gpu_model: "{gpu_model}"\n' if gpu_model else ""
    resources = "".join(f'  {rule}:\n    slurm_partition: "{gpu_partition}"\n    gpu: 1\n{model}'
                        f"    cpus_per_gpu: {cpus_per_gpu}\n" for rule in GPU_RULES)
    threads = "".join(f"  {rule}: {cpus_per_gpu}\n" for rule in GPU_RULES)
    return "set-resources:\n" + resources + "set-threads:\n" + threads


def user_profile_dir(name: str) -> Path:
    """Where Snakemake looks for ``--profile NAME`` in the user's config folder.

    Snakemake uses platformdirs' user config dir, i.e. ``$XDG_CONFIG_HOME/snakemake`` or
    ``~/.config/snakemake`` on Linux.
    """
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "snakemake" / name


def profile_template(name: str) -> str:
    """The text of a shipped profile template (``src/phenoica/snakemake_profiles/<name>/config.yaml``)."""
    if name not in PROFILE_NAMES:
        raise InputError("profile", f"unknown profile {name!r}; available: {', '.join(PROFILE_NAMES)}")
    return resources.files("phenoica.snakemake_profiles").joinpath(name, "config.yaml").read_text()


def _positive(value: int, option: str) -> int:
    if int(value) < 1:
        raise InputError(option, f"must be a positive integer, got {value}")
    return int(value)


def render_slurm_profile(
    account: str | None,
    partition: str,
    gpu_partition: str | None = None,
    *,
    gpu_model: str | None = None,
    cpus_per_gpu: int = 4,
    jobs: int = 100,
    group_size: int = 20,
    status_command: str = "squeue",
    status_wait_s: int = 40,
    max_cores: int = 8,
    max_mem_mb: int = 64000,
    raise_cores_to_cpus_per_gpu: bool = True,
) -> str:
    """Fill the Slurm profile template and return the YAML text.

    Parameters
    ----------
    account, partition
        Slurm account (``sbatch -A``; None: no account, for clusters without accounting) and
        the partition for CPU jobs.
    gpu_partition
        Partition for the GPU rules (train, embed); ``partition`` when not given.
    gpu_model
        Optional GPU type (``sbatch --gpus=<model>:1``), as the cluster names it in gres.conf.
    cpus_per_gpu
        CPU cores per GPU job (also the threads of the GPU rules).
    jobs
        Most Slurm jobs in the queue at once.
    group_size
        How many plates one grouped per-plate CPU job (simulate, ingest) handles.
    status_command
        How the executor polls its jobs. ``squeue`` (default) needs a MinJobAge of a few minutes;
        the executor itself switches to sacct where MinJobAge is shorter. ``sacct`` needs slurmdbd
        accounting; note that snakemake-executor-plugin-slurm 2.8 does not recognise sacct's
        ``CANCELLED by <uid>`` state, so a job cancelled with scancel is waited on forever.
        ``auto`` leaves the choice to the executor (sacct wherever it is installed).
    status_wait_s
        Seconds before the executor's first status check, and the base of its polling interval.
    max_cores, max_mem_mb
        The most cores and memory (MB) one Slurm job may ask for: they cap a job's threads and
        memory (also a retry's mem_mb x attempt) and set how many grouped plates run side by
        side in one job. ``max_cores`` is raised to ``cpus_per_gpu`` if lower.
    """
    if account is not None:
        account = check_identifier(account, "Slurm account", "--account")
    partition = check_identifier(partition, "Slurm partition", "--partition")
    gpu_partition = check_identifier(gpu_partition or partition, "Slurm partition", "--gpu-partition")
    if gpu_model is not None:
        gpu_model = check_identifier(gpu_model, "GPU model", "--gpu-model")
    if status_command not in STATUS_COMMANDS:
        raise InputError(
            "--status-command", f"{status_command!r} is not one of {', '.join(STATUS_COMMANDS)}"
        )
    values = {
        "account_line": f'  slurm_account: "{account}"\n' if account else "",
        "partition": partition,
        "gpu_partition": gpu_partition,
        "cpus_per_gpu": _positive(cpus_per_gpu, "--cpus-per-gpu"),
        "jobs": _positive(jobs, "--jobs"),
        "group_size": _positive(group_size, "--group-size"),
        "status_wait": _positive(status_wait_s, "--status-wait"),
        "max_cores": (max(_positive(max_cores, "--max-cores"), int(cpus_per_gpu))
                      if raise_cores_to_cpus_per_gpu else _positive(max_cores, "--max-cores")),
        "max_mem_mb": _positive(max_mem_mb, "--max-mem-mb"),
        "gpu_spec": f"{gpu_model}:1" if gpu_model else "1",
        "gpu_rules": _gpu_rules_block(gpu_partition, gpu_model, _positive(cpus_per_gpu,
                                                                           "--cpus-per-gpu")),
        "status_command": (f"slurm-status-command: {status_command}\n"
                           if status_command != "auto" else ""),
    }
    text = string.Template(profile_template("slurm")).substitute(values)
    yaml.safe_load(text)  # a template bug must fail here, not in the user's next snakemake run
    return text


def install_profile(text: str, dest: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``text`` as ``dest/config.yaml`` (atomically); refuse to overwrite unless ``force``."""
    target = Path(dest) / "config.yaml"
    if target.exists() and not force:
        raise InputError(target, "already exists; pass --force to overwrite it")
    if Path(dest).exists() and not Path(dest).is_dir():
        raise InputError(dest, "exists and is not a folder")
    atomic_write_text(target, text)
    return target


def _add_profile_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=PROFILE_NAMES, help="profile to write")
    parser.add_argument("--account", help="Slurm account (sbatch -A); leave out only where the "
                        "cluster has no accounting")
    parser.add_argument("--partition", required=True, help="partition for CPU jobs")
    parser.add_argument("--gpu-partition", help="partition for GPU jobs (default: --partition)")
    parser.add_argument("--gpu-model", help="GPU type as in the cluster's gres.conf (optional)")
    parser.add_argument("--cpus-per-gpu", type=int, default=None,
                        help=f"CPU cores per GPU job ({DEFAULTS['cpus_per_gpu']}, at most what one "
                        "node of the GPU partition has)")
    parser.add_argument("--jobs", type=int, default=100, help="most Slurm jobs at once (100)")
    parser.add_argument(
        "--group-size", type=int, default=20, help="plates per grouped per-plate CPU job (20)"
    )
    parser.add_argument(
        "--status-command",
        choices=STATUS_COMMANDS,
        default="squeue",
        help="how the executor polls jobs: squeue (default; survives scancel), sacct (needs "
        "accounting; the executor hangs on jobs cancelled with scancel), auto",
    )
    parser.add_argument(
        "--status-wait", type=int, default=40, help="seconds before the first status check (40)"
    )
    parser.add_argument(
        "--max-cores", type=int, default=None,
        help=f"most cores one Slurm job asks for ({DEFAULTS['max_cores']}, at most what one node "
        "of the partition has)"
    )
    parser.add_argument(
        "--max-mem-mb", type=int, default=None,
        help=f"most memory one Slurm job asks for ({DEFAULTS['max_mem_mb']}, at most what one "
        "node offers)"
    )
    parser.add_argument(
        "--no-cluster-check", action="store_true",
        help="do not read the partitions' limits with sinfo/scontrol (e.g. away from the cluster)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phenoica", description="phenoica: batch-robust cell-microscopy embeddings"
    )
    parser.add_argument("--version", action="version", version=f"phenoica {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    profile = commands.add_parser("profile", help="Snakemake execution profiles")
    actions = profile.add_subparsers(dest="action", required=True)
    install = actions.add_parser(
        "install",
        help="write a profile where `snakemake --profile NAME` finds it",
        description="Write a Snakemake profile to ~/.config/snakemake/NAME/config.yaml "
        "(or --dest), so `snakemake --profile NAME` works from the project folder.",
    )
    _add_profile_options(install)
    install.add_argument("--dest", help="folder to write config.yaml into "
                         "(default: ~/.config/snakemake/NAME)")
    install.add_argument("--force", action="store_true", help="overwrite an existing profile")
    show = actions.add_parser("show", help="print the profile instead of writing it")
    _add_profile_options(show)

    slurm = commands.add_parser("slurm", help="Slurm helpers")
    slurm_actions = slurm.add_subparsers(dest="action", required=True)
    check = slurm_actions.add_parser(
        "check", help="list your pending Slurm jobs that can never start",
        description="List this user's pending Slurm jobs whose reason can never clear on the "
        "cluster as it is (PartitionConfig, per-job limits, a down partition, ...), with what "
        "each asks for and what its partition offers. Exit status 1 when there are any.")
    check.add_argument("--workdir", help="only jobs submitted from this folder (a project root)")
    check.add_argument("--cancel", action="store_true", help="scancel them")

    gallery = commands.add_parser(
        "gallery", help="draw one component's gallery from a finished run",
        description="Draw one component's gallery (the sites at its two extremes as colour "
        "composites, or for profile inputs its top loading features) from the results files of a "
        "finished run, with the shown sites (or loadings) in a TSV beside the PNG. The config "
        "names the results folder, model, channels and the gallery section (config/README.md).")
    gallery.add_argument("method", help="a post-processing output name (postprocess.methods)")
    gallery.add_argument("component", help="a component name, e.g. IC7 (the scores table's)")
    gallery.add_argument("--configfile", default="config/config.yaml",
                         help="the run's config (default: the demo's config/config.yaml)")
    gallery.add_argument("--out", help="PNG to write (default: <method>_<component>.png)")
    gallery.add_argument("--per-side", type=int, help="sites per extreme (gallery.per_side)")
    gallery.add_argument("--seed", type=int, help="seed of the draws (default: the config's)")
    return parser


def _render_from_args(args: argparse.Namespace) -> str:
    # names first (they go on sinfo/scontrol command lines), as render_slurm_profile checks them
    if args.account is not None:
        check_identifier(args.account, "Slurm account", "--account")
    check_identifier(args.partition, "Slurm partition", "--partition")
    if args.gpu_partition is not None:
        check_identifier(args.gpu_partition, "Slurm partition", "--gpu-partition")
    requested = {key: getattr(args, key) for key in DEFAULTS}
    explicit = {key for key, value in requested.items() if value is not None}
    values = {key: DEFAULTS[key] if value is None else value for key, value in requested.items()}
    checked = False
    if not args.no_cluster_check:
        try:
            gpu_name = args.gpu_partition or args.partition
            cpu = slurm.partition_limits(args.partition)
            gpu = cpu if gpu_name == args.partition else slurm.partition_limits(gpu_name)
        except InputError as err:
            if err.source is not None and err.source in (args.partition, args.gpu_partition):
                raise
            print(f"phenoica: note: could not read the cluster's limits ({err}); the profile's "
                  "requests are not checked against it", file=sys.stderr)
        else:
            for key in DEFAULTS:
                _positive(values[key], "--" + key.replace("_", "-"))
            fitted = slurm.fit_profile(**values, explicit=explicit, cpu=cpu, gpu=gpu,
                                       gpu_model=args.gpu_model)
            values = {"max_cores": fitted.max_cores, "cpus_per_gpu": fitted.cpus_per_gpu,
                      "max_mem_mb": fitted.max_mem_mb}
            for note in fitted.notes:
                print(f"phenoica: note: {note}", file=sys.stderr)
            checked = True
    return render_slurm_profile(
        args.account,
        args.partition,
        args.gpu_partition,
        gpu_model=args.gpu_model,
        cpus_per_gpu=values["cpus_per_gpu"],
        jobs=args.jobs,
        group_size=args.group_size,
        status_command=args.status_command,
        status_wait_s=args.status_wait,
        max_cores=values["max_cores"],
        max_mem_mb=values["max_mem_mb"],
        raise_cores_to_cpus_per_gpu=not checked,
    )


def _slurm_check(args: argparse.Namespace) -> int:
    workdir = os.path.abspath(args.workdir) if args.workdir else None
    if args.cancel:
        messages: list[str] = []
        cancelled = slurm.cancel_stuck_jobs(workdir=workdir, report=messages.append)
        for message in messages:
            print(message)
        if cancelled:
            print(f"cancelled Slurm job(s) {' '.join(cancelled)}")
        return 1 if cancelled else 0
    stuck = slurm.stuck_jobs(workdir=workdir)
    for _, message in stuck:
        print(message)
    if not stuck:
        print("no pending job that can never start")
    return 1 if stuck else 0


def _gallery(args: argparse.Namespace) -> int:
    from .gallery import component_gallery

    overrides = {k: v for k, v in (("per_side", args.per_side), ("seed", args.seed)) if v is not None}
    if args.per_side is not None:
        _positive(args.per_side, "--per-side")
    out = args.out or f"{args.method}_{args.component}.png"
    component_gallery(args.configfile, args.method, args.component, out, **overrides)
    print(f"wrote {out} and {Path(out).with_suffix('.tsv')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``phenoica`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "gallery":
            return _gallery(args)
        if args.command == "slurm" and args.action == "check":
            return _slurm_check(args)
        if args.command == "profile" and args.action == "show":
            sys.stdout.write(_render_from_args(args))
            return 0
        if args.command == "profile" and args.action == "install":
            text = _render_from_args(args)
            dest = Path(args.dest) if args.dest else user_profile_dir(args.name)
            target = install_profile(text, dest, force=args.force)
            print(f"wrote {target}; run `snakemake --profile {args.name}` in the project folder")
            if args.dest and Path(args.dest).name != args.name:
                print(f"note: Snakemake finds --profile {args.name} only in a folder named "
                      f"{args.name!r}; use --profile {target.parent}", file=sys.stderr)
            return 0
    except PhenoicaError as err:
        print(f"phenoica: error: {err}", file=sys.stderr)
        return 2
    parser.error("unknown command")  # argparse makes sub-commands required; kept for type checkers
    return 2


if __name__ == "__main__":
    sys.exit(main())
