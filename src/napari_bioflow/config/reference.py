"""The config as documentation: the Markdown reference and the commented starting YAML of `init`."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel

from .run import RunConfig
from .sections import DataConfig


def _type_name(annotation) -> str:
    s = str(annotation).replace("typing.", "").replace("pathlib.", "").replace("NoneType", "None")
    return s.replace("<class '", "").replace("'>", "")


def config_reference() -> str:
    """Markdown reference of every config field, generated from the model (kept current by a test)."""
    lines = [
        "# Config reference",
        "",
        "Generated from `napari_bioflow.config.RunConfig` by `napari-bioflow docs`; do not edit by hand.",
        "Every field can be set in the YAML file or overridden on the command line with `--set section.field=value`.",
        "",
    ]

    def section(model: type[BaseModel], prefix: str):
        rows, subs = [], []
        for fname, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                subs.append((ann, f"{prefix}{fname}."))
                continue
            default = f.get_default(call_default_factory=True)
            rows.append(
                f"| `{prefix}{fname}` | `{_type_name(ann)}` | {f'`{default}`' if default is not None else 'empty'} | {f.description or ''} |"
            )
        lines.extend(
            [
                f"## `{prefix.rstrip('.') or 'top level'}`",
                "",
                "| field | type | default | meaning |",
                "|---|---|---|---|",
                *rows,
                "",
            ]
        )
        for sub, p in subs:
            section(sub, p)

    section(RunConfig, "")
    return "\n".join(lines)


def commented_config(workflow: str, ndim: int = 2, values: dict | None = None, notes: tuple[str, ...] = ()) -> str:
    """A starting YAML config for `workflow`, every field with its description as a comment. `values` (nested
    sections) replace the starting values; `notes` are comment lines added below the header."""
    import textwrap

    from ..engine.workflows import get_workflow

    needs_target = get_workflow(workflow).needs_target
    start = RunConfig(
        workflow=workflow,
        ndim=ndim,
        name=f"my_{workflow}_{ndim}d",
        data=DataConfig(
            patch_size=[32, 128, 128] if ndim == 3 else [256, 256],
            train_raw=Path("path/to/train/raw"),
            train_label=Path("path/to/train/label") if needs_target else None,
        ),
    )
    start = start.model_dump(mode="json")
    for section, fields in (values or {}).items():
        if isinstance(fields, dict) and isinstance(start.get(section), dict):
            start[section].update(fields)
        else:
            start[section] = fields
    values = RunConfig.model_validate(start).model_dump(mode="json")
    out = [
        f"# napari-bioflow config: {workflow.replace('_', ' ')}, {ndim}D.",
        "# Run: napari-bioflow train THIS.yaml   (override any field: --set train.epochs=5)",
        *(f"# {line}" for line in notes),
        "",
    ]

    def emit(model: type[BaseModel], data: dict, indent: str):
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                out.append(f"{indent}{name}:")
                emit(ann, data[name], indent + "  ")
                continue
            for line in textwrap.wrap(f.description or "", 100 - len(indent)):
                out.append(f"{indent}# {line}")
            dumped = yaml.safe_dump({name: data[name]}, default_flow_style=True, sort_keys=False).strip()
            out.append(f"{indent}{dumped[1:-1] if dumped.startswith('{') else dumped}")

    emit(RunConfig, values, "")
    return "\n".join(out) + "\n"
