"""Loading a saved run config (a run's config_files/<run>.yaml, or any RunConfig YAML) into the Train dock's fields,
to repeat a run or change it: the workflow and dimensions first (the other fields follow them), then every field."""

from __future__ import annotations

from pathlib import Path

from ..engine.errors import InputError
from .train_fields import model_options_of


def config_value(cfg, path: str):
    value = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


class TrainConfigLoader:
    """Mixin of TrainWidget: `load_config(path)` and the "Load config…" button's dialog."""

    def choose_config(self, *_) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(
            self, "Load a run config", str(self.form.value("output_dir") or ""), "YAML (*.yaml *.yml)"
        )
        if path:
            self.load_config(Path(path))

    def load_config(self, path: Path) -> list[str]:
        """Set the fields from the config file at `path`; returns (and says) what could not be set."""
        from ..config import RunConfig

        try:
            cfg = RunConfig.load(Path(path))
        except InputError as e:
            self._error(str(e))
            return [str(e)]
        f, skipped = self.form, []

        def put(widget, value, what: str) -> None:
            try:
                widget.value = value
            except (ValueError, TypeError, KeyError):
                skipped.append(what)

        put(f["workflow"], cfg.workflow, "workflow")
        for path_ in self.variant_fields:
            put(f[path_], config_value(cfg, path_), path_)
        put(f["ndim"], cfg.ndim, "ndim")
        for key, widget in f.widgets.items():
            if key in ("workflow", "ndim", *self.variant_fields):
                continue
            value = config_value(cfg, key)
            if value is None:
                value = "" if key in f._optional and not isinstance(widget.value, (int, float)) else 0
                if hasattr(widget, "line_edit"):  # a path box: empty
                    widget.line_edit.value = ""
                    continue
            put(widget, value, self.words().get(key, key))
        self._chosen = frozenset(self.followed_fields())  # the config's values stay when the workflow changes
        patch = list(cfg.data.patch_size)
        put(self.patch_yx, patch[-1], "patch Y, X")
        if cfg.ndim == 3:
            put(self.patch_z, patch[0], "patch Z")
        options = dict(cfg.model.options)
        known = model_options_of(cfg.model.name)
        self.feature_maps.value = ", ".join(map(str, options.pop("feature_maps", []) or []))
        for key, widget in (
            ("patch_size", self.token_size),
            ("mask_type", self.mask_type),
            ("mask_ratio", self.mask_ratio),
        ):
            if key in options and key in known:
                put(widget, options.pop(key), key.replace("_", " "))
        self.model_options.value = ", ".join(f"{k}: {v}" for k, v in options.items())
        folders = cfg.data.train_raw is not None
        self.source.value = "folders" if folders else "layers"
        self.validation.value = "folders" if cfg.data.val_raw is not None else "split"
        note = f"Loaded {path} into the fields."
        if skipped:
            note += f" Not set (out of the dock's range or choices): {', '.join(skipped)}."
        if not folders:
            note += " Choose the layers to train on."
        self._info(note)
        return skipped
