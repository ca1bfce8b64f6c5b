"""`init`, `docs` and `models`: starting configs, the config reference and the model list."""

from __future__ import annotations

from pathlib import Path

from .common import _print


def cmd_init(args) -> None:
    from ..config import commented_config
    from ..engine.errors import InputError
    from ..engine.workflows.base import variants, workflow_class, workflow_classes

    field, values = variants(args.workflow)
    if args.variant and field is None:
        having = ", ".join(dict.fromkeys(c.name for c in workflow_classes() if c.variant))
        raise InputError(f"--pretext is an option of {having}, not {args.workflow}.")
    if args.variant and args.variant not in values:
        raise InputError(f"--pretext {args.variant} is not a variant of {args.workflow}; use {', '.join(values)}.")
    cls = workflow_class(args.workflow, args.variant)
    stem = cls.key().replace("/", "_")
    out = Path(args.output or f"{stem}_{args.ndim}d.yaml")
    if out.exists() and not args.force:
        raise InputError(f"{out} exists already; choose another --output or add --force.")
    out.write_text(commented_config(args.workflow, args.ndim, cls.init_values(args.ndim), cls.init_notes))
    _print(f"wrote {out}")


def cmd_docs(args) -> None:
    from ..config import config_reference

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(config_reference())
    _print(f"wrote {args.output}")


def cmd_models(args) -> None:
    from ..engine.models import model_info
    from ..engine.workflows.base import workflow_classes

    for cls in workflow_classes():  # grouped by the workflows they serve (a model may serve several)
        _print(f"# {cls.full_title()}")
        for name in cls.models():
            _print(f"{name}: {model_info(name)}")
