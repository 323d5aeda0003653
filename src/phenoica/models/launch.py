"""One data-parallel training rank: ``python -m phenoica.models.launch ARGS.json``.

``train_model`` starts this module under torchrun when more than one process is requested;
a multi-node launcher (e.g. ``srun torchrun --nnodes ...``) can start it directly with the
same JSON (the keyword arguments of ``train_model``, plus ``manifest_paths``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..logs import configure_logging
from .train import _dist_env, run_training


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m phenoica.models.launch ARGS.json")
    configure_logging()
    kwargs = json.loads(Path(argv[0]).read_text())
    try:
        run_training(kwargs.pop("manifest_paths"), **kwargs)
    finally:
        if _dist_env()[1] > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


if __name__ == "__main__":
    main()
