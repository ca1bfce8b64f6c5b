"""What the Train dock shows: the fields that follow the chosen workflow (and its variant), the model list, the
dimensions."""

from __future__ import annotations

from .train_fields import (
    _AUGMENT_3D_ONLY,
    model_options_of,
    section_options,
)


class TrainView:
    """Mixin of TrainWidget: which fields show and what their choices are."""

    _chosen: frozenset[str] = frozenset()  # workflow-default fields the user (or a loaded config) set: kept
    _following = False  # the dock itself is setting them

    @property
    def workflow(self) -> str:
        return self.form["workflow"].value

    @property
    def workflow_class(self):
        """The chosen workflow's class (its variant too, e.g. the self-supervised pretext): what the fields follow."""
        from ..engine.workflows.base import workflow_class

        cls = workflow_class(self.workflow)
        return workflow_class(self.workflow, self.form[cls.variant[0]].value) if cls.variant else cls

    def _on_workflow(self, *_) -> None:
        """The pairs, the loss choices, the model list and the chart follow the workflow (and its variant)."""
        cls = self.workflow_class
        mode = cls.trains_from if cls.trains_from in ("labels", "image") else "none"
        self.pairs.set_mode(mode)
        self.val_pair.set_mode(mode)
        loss = self.form["train.loss"]
        current = loss.value
        loss.choices = list(cls.losses)
        loss.value = current if current in loss.choices else cls.losses[0]
        self._follow_defaults(cls)
        self.chart.set_metric(cls.chart_metric)
        self._update_models()
        self._adapted = (self._adapted[0], None)  # read the second layer (classes, target channels) again
        self._adapt()
        self._update_visibility()

    def followed_fields(self) -> list[str]:
        """The fields whose default is a workflow's own (Workflow.config_defaults of any workflow)."""
        from ..engine.workflows.base import workflow_classes

        keys = {k for cls in workflow_classes() for k in cls.config_defaults}
        return sorted(k for k in keys if k in self.form.widgets)

    def _follow_defaults(self, cls) -> None:
        """Fields such as data.normalization show the workflow's default (meanstd and no intensity jitter for image
        to image) until the user picks a value."""
        self._following = True
        try:
            for key in self.followed_fields():
                if key not in self._chosen and self.form[key].value != cls.default_of(key):
                    self.form[key].value = cls.default_of(key)
        finally:
            self._following = False

    def _on_followed(self, key: str) -> None:
        if not self._following:
            self._chosen = self._chosen | {key}

    def _update_models(self) -> None:
        name = self.form["model.name"]
        current = name.value
        cls = self.workflow_class
        name.choices = cls.models(self.form["ndim"].value)
        if current in name.choices:
            name.value = current
        elif name.choices:
            name.value = cls.default_model if cls.default_model in name.choices else name.choices[0]

    def _update_visibility(self, *_) -> None:
        f, wf = self.form, self.workflow_class
        labels, target, cls = (wf.trains_from == w for w in ("labels", "image", "classes"))
        layers = self.source.value == "layers"
        self.pairs.visible, self.class_layers.visible, self.folders.visible = (
            layers and not cls,
            layers and cls,
            not layers,
        )
        choices = (
            ["split", "folders"] if cls else ["split", "layers", "folders"]
        )  # classes are validated by split or folder
        if list(self.validation.choices) != choices:
            self.validation.choices = choices
        mode = self.validation.value
        f["data.val_split"].visible = mode == "split"
        self.val_pair.visible, self.val_folders.visible = mode == "layers", mode == "folders"
        second = "label folder" if labels else "target folder"
        for path in ("data.train_label", "data.val_label"):
            f[path].visible = labels or target
            f[path].label = second
        for path in ("data.train_raw", "data.val_raw"):
            f[path].label = "class folders" if cls else "raw folder"
        for path in section_options():  # each workflow's own options (crappify's noise, classification's fit)
            f[path].visible = path in wf.section_options
        for path in self.variant_fields:
            f[path].visible = wf.variant is not None and wf.variant[0] == path
        f["n_classes"].visible = f["data.foreground_sampling"].visible = f["data.save_prob_map"].visible = (
            labels  # classification: from the classes given
        )
        f["data.target_channels"].visible = f["data.multiple_raw"].visible = target
        f["train.loss"].visible = len(wf.losses) > 1  # e.g. the MAE's loss is the MSE on its hidden tokens
        options = model_options_of(f["model.name"].value)
        self.ssl_group.setVisible(any(p in self._ssl_paths for p in wf.section_options) or "mask_type" in options)
        self.feature_maps.visible = "feature_maps" in options
        self.token_size.visible = "patch_size" in options
        if "patch_size" in options and f["model.name"].value != self._token_model:  # a new model: its own default
            self._token_model = f["model.name"].value
            self.token_size.value = options["patch_size"]
        self.mask_type.visible, self.mask_ratio.visible = "mask_type" in options, "mask_ratio" in options
        f["train.momentum"].visible = f["train.optimizer"].value == "SGD"
        f["train.warmup_epochs"].visible = f["train.scheduler"].value == "warmup_cosine"
        f["data.percentile_low"].visible = f["data.percentile_high"].visible = (
            f["data.normalization"].value == "percentile"
        )
        f["data.custom_mean"].visible = f["data.custom_std"].visible = f["data.normalization"].value == "custom"

    def _on_ndim(self, ndim: int) -> None:
        self.patch_z.visible = ndim == 3
        for name in _AUGMENT_3D_ONLY:  # sections along Z: none in 2D (the config refuses them there)
            self.form[f"augment.{name}_prob"].visible = ndim == 3
            if ndim == 2:
                self.form[f"augment.{name}_prob"].value = 0.0
        self._update_models()
