"""Model registry (timm-style): a workflow adds a model by decorating a builder; the trainer only calls
:func:`create_model`, so new architectures never touch it.

A builder is ``fn(*, ndim, in_channels, out_channels, opt1=default1, ...) -> nn.Module``. Its keyword
defaults *are* the option schema: they give :func:`model_info` for a GUI and catch misspelt options.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

__all__ = ["UnknownModelError", "create_model", "list_models", "model_info", "model_task", "register_model"]

_SHAPE_ARGS = ("ndim", "in_channels", "out_channels")


class UnknownModelError(KeyError, ValueError):
    """A model name that was never registered: a failed lookup (KeyError) and a bad config value (ValueError)."""

    def __str__(self) -> str:
        # KeyError would show the message in quotes
        return str(self.args[0])


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    ndims: tuple[int, ...]
    defaults: dict
    task: str  # "dense" (one value per pixel: segmentation, restoration, MAE) or "classification" (one per image)
    tags: tuple[str, ...] = ()  # what else a workflow needs to know, e.g. "masked_autoencoder", "restoration"


_REGISTRY: dict[str, _Entry] = {}


def _to_json(value, what: str):
    """Round-trip through JSON so options are stored exactly as a checkpoint will give them back (tuples -> lists)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be JSON-serialisable, got {value!r}") from None


TASKS = ("dense", "classification")


def register_model(name: str, *, ndims: Sequence[int] = (2, 3), task: str = "dense", tags: Sequence[str] = ()):
    """Decorator registering ``fn`` as the builder of model ``name`` for the spatial dimensionalities ``ndims``.
    ``tags`` say what kind of network it is beyond its task ("masked_autoencoder": trained by hiding tokens, with
    a ``forward_mae``; "restoration": an image restoration network without a down-sampling path): a workflow
    decides from the task and tags which models fit it (Workflow.fits_model)."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if task not in TASKS:
            raise ValueError(f"task of model {name!r} must be one of {', '.join(TASKS)}")
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        params = inspect.signature(fn).parameters
        if any(arg not in params for arg in _SHAPE_ARGS):
            raise TypeError(f"builder of model {name!r} must accept {', '.join(_SHAPE_ARGS)}")
        defaults = {}
        for p in params.values():
            if p.name in _SHAPE_ARGS:
                continue
            if p.kind is not p.KEYWORD_ONLY or p.default is p.empty:
                raise TypeError(f"builder of model {name!r}: option {p.name!r} must be keyword-only with a default")
            defaults[p.name] = _to_json(p.default, f"default of option {p.name!r} of model {name!r}")
        _REGISTRY[name] = _Entry(fn, tuple(ndims), defaults, task, tuple(tags))
        return fn

    return decorator


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, *, ndim: int, in_channels: int, out_channels: int, **options) -> nn.Module:
    """Build model ``name``; the result carries ``model_name``, ``model_options`` (all options, resolved,
    JSON-serialisable) and ``size_divisor`` (spatial input sizes must be multiples of it)."""
    entry = _entry(name)
    if ndim not in entry.ndims:
        raise ValueError(f"model {name!r} supports {' and '.join(f'{d}D' for d in entry.ndims)} only")
    unknown = [key for key in options if key not in entry.defaults]
    if unknown:
        raise ValueError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for model {name!r}; "
            f"options: {', '.join(entry.defaults) or 'none'}"
        )
    for arg, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    resolved = copy.deepcopy(entry.defaults)
    resolved.update({k: _to_json(v, f"option {k!r} of model {name!r}") for k, v in options.items()})
    # the builder sees exactly what is stored, so a model rebuilt from a checkpoint is the same model
    model = entry.builder(ndim=ndim, in_channels=in_channels, out_channels=out_channels, **copy.deepcopy(resolved))
    model.size_divisor = int(getattr(model, "size_divisor", 1))
    model.model_name = name
    model.model_options = resolved
    return model


def list_models(ndim: int | None = None, task: str | None = "dense") -> list[str]:
    """Registered model names, sorted; with ``ndim``, only those that support it; with ``task`` ("dense",
    "classification"), only that kind (None: all)."""
    return sorted(
        name for name, e in _REGISTRY.items() if (ndim is None or ndim in e.ndims) and (task is None or e.task == task)
    )


def model_task(name: str) -> str:
    """ "dense" or "classification"."""
    return _entry(name).task


def model_tags(name: str) -> tuple[str, ...]:
    """The tags a model was registered with (see register_model)."""
    return _entry(name).tags


def model_info(name: str) -> dict:
    """Option -> default for model ``name`` (a copy: safe to edit)."""
    return copy.deepcopy(_entry(name).defaults)
