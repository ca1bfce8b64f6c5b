"""What a training reads from the Train dock: its config from the fields, the fields that adapt to the chosen layers,
the samples from the layers, the layers saved with the run and the preview's source."""

from __future__ import annotations

import re

from ..config import RunConfig
from ..engine.errors import InputError
from ..engine.workflows import get_workflow
from .fields import parse_ints
from .layers import (
    LayerPair,
    guess_classes,
    guess_ndim,
    layer_array,
    layer_channels,
    spatial_axes,
)
from .preview import Preview
from .train_fields import (
    _floor16,
    fit_patch,
    model_options_of,
    parse_options,
)


class TrainInputs:
    """Mixin of TrainWidget: the config and samples of a run."""

    def _adapt(self, *_) -> None:
        """Dimensions and channels follow the first pair's image; patch size and validation fraction fit every chosen
        image (and the validation strip of a single one, see fit_patch); classes and target channels follow the first
        pair's second layer. Each time the chosen layers or the validation change."""
        if self.workflow_class.trains_from == "classes":
            return self._adapt_classes()
        first = self.pairs.pairs[0]
        image, second = first.image_layer.value, first.second
        val_image = self.val_pair.image_layer.value if self.validation.value == "layers" else None
        images = [p.image_layer.value for p in self.pairs.pairs] + [val_image]
        key = (tuple(id(i) for i in images), self.validation.value)
        if image is not None and key != self._adapted[0]:
            ndim = guess_ndim(image)
            self.form["ndim"].value = ndim
            self.form["data.in_channels"].value = layer_channels(image, ndim) or 1
            shapes = [
                tuple(layer_array(i).shape[a] for a in axes)
                for i in images
                if i is not None and (axes := spatial_axes(i, ndim)) is not None
            ]
            if shapes:
                hold_strip = self.validation.value == "split" and len(self.pairs.pairs) == 1
                depth, patch, fraction = fit_patch(shapes, ndim, hold_strip)
                self.patch_yx.value = patch
                self.patch_z.value = depth if ndim == 3 else self.patch_z.value
                if fraction is not None:
                    self.form["data.val_split"].value = fraction
        elif image is None:
            key = None
        if second is not None and second is not self._adapted[1]:
            if first.mode == "labels":
                self.form["n_classes"].value = max(2, guess_classes(second) or 2)
            else:
                self.form["data.target_channels"].value = layer_channels(second, self.form["ndim"].value) or 1
        self._adapted = (key, second)

    def _adapt_classes(self) -> None:
        """Dimensions, channels and patch size follow the first class row's image (a slice when split)."""
        geometry = self.class_layers.geometry()
        if geometry is None or geometry == self._adapted[0]:
            return
        ndim, channels, shape = geometry
        self.form["ndim"].value, self.form["data.in_channels"].value = ndim, channels
        self.patch_yx.value = max(8, _floor16(min(shape[-2:]), 256 if ndim == 2 else 128))
        if ndim == 3:
            self.patch_z.value = _floor16(shape[0], 32)
        self._adapted = (geometry, None)

    def build_config(self) -> RunConfig:
        data = self.form.values()
        ndim = data["ndim"]
        data["data"]["patch_size"] = [self.patch_z.value] * (ndim == 3) + [self.patch_yx.value] * 2
        known, options = model_options_of(data["model"]["name"]), {}
        if "feature_maps" in known and self.feature_maps.value.strip():
            options["feature_maps"] = parse_ints(self.feature_maps.value, "Feature maps")
        if "patch_size" in known:
            options["patch_size"] = self.token_size.value
        if "mask_type" in known:
            options["mask_type"] = self.mask_type.value
        if "mask_ratio" in known:
            options["mask_ratio"] = round(self.mask_ratio.value, 4)
        options.update(parse_options(self.model_options.value))
        data["model"]["options"] = options
        if self.source.value == "layers":
            data["data"]["train_raw"] = data["data"]["train_label"] = None
        if self.workflow_class.trains_from not in ("labels", "image"):
            data["data"]["train_label"] = data["data"]["val_label"] = None
        if self.validation.value != "folders":
            data["data"]["val_raw"] = data["data"]["val_label"] = None
        return RunConfig.from_dict(data, source="Train")

    def _samples(self, cfg, pairs: list[LayerPair], notes: list[str]):
        from ..engine.data.sources import make_sample

        out = []
        for pair in pairs:
            image, second = pair.image_layer.value, pair.second
            if image is None:
                raise InputError(
                    "Choose an Image layer for every "
                    + ("image" if pair.mode == "none" else "pair")
                    + " (or load one into the viewer)."
                )
            name = f"image layer '{image.name}'"
            if pair.mode == "none":
                out.append(make_sample(layer_array(image), name, cfg, notes=notes, need_label=False))
                continue
            if second is None:
                raise InputError(f"Choose a {'Labels' if pair.mode == 'labels' else 'target Image'} layer for {name}.")
            if second is image:
                raise InputError(
                    f"The target layer is image layer '{image.name}' itself: choose the image the model should "
                    "output for it (image to image learns to turn one into the other)."
                )
            kind = "labels layer" if pair.mode == "labels" else "target layer"
            out.append(
                make_sample(
                    layer_array(image),
                    name,
                    cfg,
                    label=layer_array(second),
                    label_name=f"{kind} '{second.name}'",
                    notes=notes,
                )
            )
        return out

    def _class_samples(self, cfg):
        """Classification from layers: the rows' images with their classes, which become the config's classes."""
        from ..engine.data.classification_data import set_classes

        if self.source.value != "layers":
            return None
        samples, names = self.class_layers.samples(cfg)
        if len(names) < 2:
            raise InputError(f"Every image is of class '{names[0]}': give the images at least two classes.")
        set_classes(cfg, names)
        return samples

    def _inputs_to_save(self, cfg) -> dict[str, list[tuple[str, object]]]:
        """The layer arrays this run trains on, by the config's data field (train_raw, train_label, val_raw,
        val_label), as (file stem, array) in training order: written with the run (jobs.save_inputs), they let its
        saved config repeat it. Classification: train_raw holds a sub-folder per class."""
        if self.source.value != "layers":
            return {}

        def stem(i: int, name: str) -> str:  # numbered: the folders are read in sorted order, as trained
            return f"{i:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_') or 'layer'}"

        if get_workflow(cfg).trains_from == "classes":
            images = [im for row in self.class_layers.rows for im in row.images()]
            return {"train_raw": [(f"{cls}/{stem(i, name)}", data) for i, (name, data, cls) in enumerate(images)]}
        out: dict[str, list] = {}
        groups = [("train", self.pairs.pairs)] + [("val", [self.val_pair])] * (self.validation.value == "layers")
        for prefix, pairs in groups:
            for i, pair in enumerate(pairs):
                name = stem(i, pair.image_layer.value.name)
                out.setdefault(f"{prefix}_raw", []).append((name, layer_array(pair.image_layer.value)))
                if pair.mode != "none":
                    out.setdefault(f"{prefix}_label", []).append((name, layer_array(pair.second)))
        return out

    def _make_preview(self, cfg, train) -> Preview | None:
        """Preview the first training image (layers) or the selected Image layer (folders), if it fits the config."""
        from napari.layers import Image

        from ..engine.data.sources import to_channels_last

        if not get_workflow(cfg).dense:  # a class per image: there is no map to preview
            return None
        layer = self.pairs.pairs[0].image_layer.value if train else self.viewer.layers.selection.active
        axes = spatial_axes(layer, cfg.ndim, cfg.data.in_channels, cfg.data.axes) if isinstance(layer, Image) else None
        if axes is None:
            return None
        try:
            image = (
                train[0].raw
                if train
                else to_channels_last(
                    layer_array(layer), cfg.ndim, cfg.data.in_channels, layer.name, axes=cfg.data.axes
                )
            )
        except InputError:
            return None
        if self.preview_ms.value <= 0:  # no preview (Advanced: preview budget 0)
            return None
        return Preview(layer, image, cfg.n_classes)
