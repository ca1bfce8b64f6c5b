"""What every command shares: rank-0 printing and loading the run config (file + --set overrides)."""

from __future__ import annotations

FAILED_FILES = 3  # exit status of a batch that finished but could not predict some of its files


def _print(msg: str) -> None:
    from ..engine.train.distributed import is_main_process

    if is_main_process():  # under torchrun only rank 0 prints
        print(msg, flush=True)


def _load_config(args):
    from ..config import RunConfig

    if args.config is None:
        return RunConfig.from_dict({}, args.set, source="command line")
    return RunConfig.load(args.config, args.set)
