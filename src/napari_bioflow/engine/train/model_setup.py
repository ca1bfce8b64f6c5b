"""The model of a run: the device, the model built from the config, its weights from a checkpoint to resume or a
model to start from (`model.start_from`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError


def resolve_device(name: str) -> str:
    """auto, cpu, cuda or cuda:N, checked against this machine's GPUs (engine/train/devices.py)."""
    from .devices import resolve_device as resolve

    return resolve(name)


def transfer_weights(model, path: Path, unused: list[str] | None = None) -> tuple[int, list[str]]:
    """Load the tensors of a checkpoint whose names and shapes match; return (loaded count, names of the model's
    tensors left initialised). `unused`, when given, receives the checkpoint's tensors that were not loaded."""
    from .checkpoint import read_weights

    source, source_name = read_weights(path)
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    if not matched:
        same = next((k for k in source if k in own), None)
        dims = lambda t: "x".join(map(str, t.shape)) or "scalar"  # noqa: E731
        why = (
            f"its tensor names match but not their shapes ({same} is {dims(source[same])} there, {dims(own[same])} here)"
            if same
            else "no tensor name matches"
        )
        raise InputError(
            f"Checkpoint {path} shares no weights with model '{model.model_name}' (it holds a "
            f"'{source_name}' model): {why}."
        )
    model.load_state_dict(matched, strict=False)
    if unused is not None:
        unused.extend(sorted(k for k in source if k not in matched))
    return len(matched), sorted(k for k in own if k not in matched)


def _names(names: list[str], shown: int = 8) -> str:
    """': a, b, c ...' for a note (the first `shown` names), '' for none."""
    return (": " + ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")) if names else ""


def build_model(cfg, workflow, notes: list[str]):
    """(model, resume): the run's model with its starting weights (a checkpoint to resume, whose contents are
    returned, or `model.start_from`, noted in `notes`), on the CPU. Bad input is one sentence (InputError)."""
    from ..models import create_model

    try:
        model = create_model(
            cfg.model.name,
            ndim=cfg.ndim,
            in_channels=cfg.data.in_channels,
            out_channels=workflow.out_channels(cfg),
            **{**workflow.model_defaults(cfg), **cfg.model.options},
        )
    except (KeyError, ValueError) as e:
        raise InputError(f"model: {e.args[0] if e.args else e}") from None
    if any(p % model.size_divisor for p in cfg.data.patch_size):
        raise InputError(
            f"The patch size {'x'.join(map(str, cfg.data.patch_size))} must be a multiple of "
            f"{model.size_divisor} for model '{cfg.model.name}'."
        )
    resume = None
    if cfg.train.resume is not None:
        resume = _read_resume(cfg)
        try:
            model.load_state_dict(resume.get("train_state_dict", resume["state_dict"]))  # raw weights under EMA
        except RuntimeError:
            raise InputError(
                f"Checkpoint {cfg.train.resume} does not fit this run's model (other classes or model "
                f"options); it cannot resume this run."
            ) from None
    elif cfg.model.start_from is not None:
        unused: list[str] = []
        loaded, skipped = transfer_weights(model, cfg.model.start_from, unused)
        notes.append(
            f"Started from {cfg.model.start_from}: {loaded} tensors loaded, "
            f"{len(skipped)} initialised{_names(skipped)}; {len(unused)} of the "
            f"checkpoint's tensors skipped{_names(unused)}."
        )
    return model, resume


def _read_resume(cfg) -> dict:
    """The checkpoint `train.resume` names, refused when it cannot continue this run."""
    from .checkpoint import read_checkpoint

    resume = read_checkpoint(cfg.train.resume)
    if resume["config"]["workflow"] != cfg.workflow or resume["model"]["name"] != cfg.model.name:
        raise InputError(
            f"Checkpoint {cfg.train.resume} is a {resume['model']['name']} for "
            f"{resume['config']['workflow']}; it cannot resume this run."
        )
    channels = resume["config"]["data"]["in_channels"]
    if channels != cfg.data.in_channels:
        raise InputError(
            f"Checkpoint {cfg.train.resume} was trained on {channels} input channel(s), but this run "
            f"has {cfg.data.in_channels} (data.in_channels); it cannot resume this run."
        )
    return resume
