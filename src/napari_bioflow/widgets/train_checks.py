"""The Train dock's checks as the fields change: what would stop a run, said beside the Train button in the dock's
words before any run starts. Only what the fields and the layers' shapes tell (no pixel is read): the config's own
checks, the chosen layers, the patch against every image and the validation strip of a single image."""

from __future__ import annotations

from ..engine.errors import InputError
from ..engine.workflows import get_workflow
from .fields import in_dock_words
from .layers import labels_fit, layer_array, spatial_axes

# config keys the Train dock shows under another name (the rest: the field's own label)
WORDS = {
    "data.val_split": "validation fraction",
    "data.patch_size": "patch size",
    "ndim": "dimensions",
    "n_classes": "classes",
}


def _size(shape) -> str:
    return "x".join(map(str, shape))


class TrainChecks:
    """Mixin of TrainWidget: `problem()` and the live check that shows it."""

    def words(self) -> dict[str, str]:
        """Config key -> the words this dock uses for it."""
        return {**{path: w.label for path, w in self.form.widgets.items()}, **WORDS}

    def in_words(self, text: str) -> str:
        return in_dock_words(text, self.words())

    def _schedule_check(self, *_) -> None:
        self._check_timer.start()  # restarted by every change: one check once the fields are still

    def run_check(self) -> str | None:
        """Check the fields now; show the problem (or nothing) beside the Train button and return it."""
        try:
            problem = self.problem()
        except Exception as e:  # the check is a help; never break the dock over it
            problem = None
            self.check_label.tooltip = f"could not check the fields: {e}"
        self.check_label.value = problem or ""
        self.check_label.visible = bool(problem)
        return problem

    def problem(self) -> str | None:
        """What would stop a run with these fields and layers, in the dock's words; None when nothing does."""
        try:
            cfg = self.build_config()
        except InputError as e:
            return self.in_words(str(e))
        if self.source.value != "layers" or get_workflow(cfg).trains_from == "classes":
            return None  # folders are read and class rows checked when the run starts
        for pair in self.pairs.pairs:
            problem = self._pair_problem(pair, cfg)
            if problem:
                return problem
        if self.validation.value == "layers":
            problem = self._pair_problem(self.val_pair, cfg, "validation ")
            if problem:
                return problem
        if self.validation.value == "split" and len(self.pairs.pairs) == 1 and cfg.data.val_split > 0:
            return self._strip_problem(self.pairs.pairs[0].image_layer.value, cfg)
        return None

    def _pair_problem(self, pair, cfg, role: str = "") -> str | None:
        image, second = pair.image_layer.value, pair.second
        what = {"labels": "labels layer", "image": "target layer"}.get(pair.mode)
        if image is None:
            return f"Choose a {role}image layer (or load one into the viewer)."
        if what and second is None:
            return f"Choose a {role}{what} for image layer '{image.name}'."
        if pair.mode == "image" and second is image:
            return (
                f"The target layer is image layer '{image.name}' itself: choose the image the model should output "
                "for it."
            )
        axes = spatial_axes(image, cfg.ndim, cfg.data.in_channels, cfg.data.axes)
        shape = layer_array(image).shape
        if axes is None:
            return f"Image layer '{image.name}' ({_size(shape)}) is not {cfg.ndim}D: change dimensions."
        spatial = [shape[a] for a in axes]
        if pair.mode == "labels" and not labels_fit(image, second):
            return (
                f"Labels layer '{second.name}' ({_size(layer_array(second).shape)}) does not match image layer "
                f"'{image.name}' ({_size(shape)})."
            )
        patch = cfg.data.patch_size
        if any(p > d for p, d in zip(patch, spatial)):
            fields = "patch Z or patch Y, X" if cfg.ndim == 3 else "patch Y, X"
            return (
                f"The patch ({_size(patch)}) is larger than {role}image layer '{image.name}' ({_size(spatial)}): "
                f"lower {fields}."
            )
        return None

    def _strip_problem(self, image, cfg) -> str | None:
        """The engine holds aside a strip at the end of a single image's Y axis, at least one patch high."""
        axes = spatial_axes(image, cfg.ndim, cfg.data.in_channels, cfg.data.axes)
        height = layer_array(image).shape[axes[-2]]
        patch = cfg.data.patch_size[-2]
        strip = max(int(round(cfg.data.val_split * height)), patch)
        if height - strip >= patch:
            return None
        fit = max(8, height // 2 // 16 * 16)
        return (
            f"Image layer '{image.name}' ({height} rows) cannot hold aside a {strip}-row validation strip and still "
            f"train on {patch}-row patches: lower patch Y, X to {fit} or the validation fraction, or validate on "
            "layers."
        )
