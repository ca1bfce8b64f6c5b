"""What a package holds besides its description and weights: test tensors from a real image, a cover image, the
documentation (training data, metrics from the run's logs, how to tile) and the environment of the PyTorch
weights."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from ..errors import InputError


def _first_image(where) -> Path | None:
    from ..data.io import is_image_path

    if where is None:
        return None
    where = Path(where)
    if is_image_path(where) and where.exists():
        return where
    if where.is_dir():
        for p in sorted(where.rglob("*")):
            if is_image_path(p) and ".zarr" not in p.parent.name:
                return p
    return None


def test_image(cfg, input_image: Path | None) -> Path:
    """The real image the test tensors come from: the one given, else the run's first test or training image."""
    if input_image is not None:
        if not Path(input_image).exists():
            raise InputError(f"Image {input_image} does not exist.")
        return Path(input_image)
    for where in (cfg.data.test_raw, cfg.data.train_raw, cfg.data.val_raw):
        found = _first_image(where)
        if found is not None:
            return found
    raise InputError(
        "No image to make the package's test tensors from: the run's data.test_raw and data.train_raw hold none "
        "here; give one (--input IMAGE)."
    )


def _crop(image: np.ndarray, sizes) -> np.ndarray:
    index = tuple(slice((L - s) // 2, (L - s) // 2 + s) for L, s in zip(image.shape[:-1], sizes))
    return image[index]


def test_tensors(loaded, layout, input_image: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(normalized input, raw input), both (1, C, ...) float32, from a real image: a centred crop of the training
    patch size (a multiple of the model's size divisor) for dense models, the image brought to the input size as
    `classification.fit` does for classifiers."""
    from ..data.io import open_image
    from ..data.sources import to_channels_last

    cfg = loaded.config
    path = test_image(cfg, input_image)
    image = to_channels_last(open_image(path), cfg.ndim, cfg.data.in_channels, str(path), axes=cfg.data.axes)
    image = np.asarray(image.compute() if hasattr(image, "compute") else image, np.float32)
    if layout.fixed is not None:
        from ..data.classification_data import fit_to_patch

        fits = all(L >= p for L, p in zip(image.shape[:-1], layout.fixed))
        raw = fit_to_patch(image, layout.fixed, "pad" if fits else "resize")  # channel first
        raw = np.moveaxis(raw, 0, -1)
    else:
        sizes = []
        for L, d, m, t in zip(image.shape[:-1], layout.divisors, layout.minimum, cfg.data.patch_size):
            if L < m:
                raise InputError(
                    f"Image {path} is too small for the package's test tensor ({'x'.join(map(str, image.shape[:-1]))}"
                    f"; at least {'x'.join(map(str, layout.minimum))} is needed): give a larger one (--input)."
                )
            sizes.append(min(L // d * d, max(m, t)))
        raw = _crop(image, sizes)
    normalized = loaded.normalizer(raw)
    to_bc = lambda a: np.ascontiguousarray(np.moveaxis(a, -1, 0)[None], dtype=np.float32)  # noqa: E731
    return to_bc(normalized), to_bc(raw)


def _plane(a: np.ndarray) -> np.ndarray:
    """A 2D uint8 view (first channel, middle Z) of a (1, C, ...) array, stretched to its 1-99.8 percentiles."""
    p = a[0, 0]
    while p.ndim > 2:
        p = p[p.shape[0] // 2]
    lo, hi = np.percentile(p, (1, 99.8))
    return (np.clip((p - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * 255).astype(np.uint8)


def write_cover(path: Path, raw: np.ndarray, output: np.ndarray, layout) -> Path:
    """A 2:1 cover: the test input beside the prediction (the last class's probability, or the image)."""
    from PIL import Image

    left = _plane(raw)
    if not layout.dense:
        right = left
    elif layout.output_id == "probabilities":  # the last class's probability, 0 to 1
        p = output[0, -1]
        while p.ndim > 2:
            p = p[p.shape[0] // 2]
        right = (np.clip(p, 0, 1) * 255).astype(np.uint8)
    else:
        right = _plane(output)
    h = 256
    tiles = [Image.fromarray(t).resize((h, h), Image.Resampling.NEAREST) for t in (left, right)]
    cover = Image.new("L", (2 * h, h))
    for i, t in enumerate(tiles):
        cover.paste(t, (i * h, 0))
    cover.save(path)
    return path


def run_folder(checkpoint: Path, cfg) -> Path | None:
    """The results folder of the run that wrote `checkpoint` (<name>/results/<name>_<run>), when it is there."""
    m = re.match(r"^(.*)-checkpoint-(best|last)\.pth$", Path(checkpoint).name)
    if not m:
        return None
    folder = Path(checkpoint).parent.parent / "results" / m.group(1)
    return folder if folder.is_dir() else None


def _csv_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def _table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |")
    return out


def _fmt(v) -> str:
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return str(v)


def documentation(folder: Path, title: str, loaded, ckpt: dict, layout, converted, run: Path | None):
    """README.md of the package and the run's log files to attach (per-epoch CSV, test metrics)."""
    cfg, wf = loaded.config, loaded.workflow
    attach: list[Path] = []
    lines = [
        f"# {title}",
        "",
        f"A {wf.full_title()} model ({cfg.model.name}, {cfg.ndim}D) trained in napari-bioflow.",
        "",
    ]
    lines += ["## Training", ""]
    lines += [
        f"- workflow: {wf.full_title()}; model: {cfg.model.name} with options `{ckpt['model']['options']}`",
        f"- training images: `{cfg.data.train_raw or 'napari layers'}`"
        + (f", targets/labels: `{cfg.data.train_label}`" if cfg.data.train_label else ""),
        (
            f"- patch size {cfg.data.patch_size}, {cfg.data.in_channels} input channel(s), normalization "
            f"`{cfg.data.normalization}` (statistics of the training data, fixed: the preprocessing)"
        ),
        (
            f"- epochs trained: {ckpt.get('epoch', '?')}; best epoch {ckpt.get('best_epoch', '?')} with validation loss "
            f"{_fmt(ckpt.get('best_val_loss', '?'))}"
        ),
    ]
    if not wf.dense:
        lines.append(f"- classes: {', '.join(cfg.class_label(i) for i in range(cfg.n_classes))}")
    lines += ["", "The full training config is attached as `training_config.yaml`.", ""]
    lines += ["## Metrics", ""]
    logs = sorted((run / "train_logs").glob("*.csv")) if run is not None else []
    if logs:
        rows = _csv_rows(logs[-1])
        lines += ["Per epoch (from the run's log, `train_log.csv` attached):", "", *_table(rows[-10:]), ""]
        target = folder / "train_log.csv"
        target.write_bytes(logs[-1].read_bytes())
        attach.append(target)
    metrics = run / "metrics.csv" if run is not None else None
    if metrics is not None and metrics.is_file():
        lines += ["Test images (`test_metrics.csv` attached):", "", *_table(_csv_rows(metrics)), ""]
        target = folder / "test_metrics.csv"
        target.write_bytes(metrics.read_bytes())
        attach.append(target)
    if not logs and not (metrics is not None and metrics.is_file()):
        lines += ["The run's logs were not found beside the checkpoint.", ""]
    lines += ["## How to use", ""]
    if layout.dense:
        lines += [
            (
                f"Input axes batch, channel, {', '.join(layout.spatial)}; every spatial size a multiple of "
                f"{'x'.join(map(str, layout.divisors))} (at least {'x'.join(map(str, layout.minimum))})."
            ),
            (
                f"Tiles of the training patch size ({'x'.join(map(str, cfg.data.patch_size))}) or larger, with a halo of "
                f"{'x'.join(map(str, layout.halo))} pixels cropped from each side of each output tile, reproduce "
                f"napari-bioflow's predictions (it blends tiles overlapping by {cfg.predict.overlap:g} of a tile)."
            ),
        ]
    else:
        lines += [
            (
                f"Input axes batch, channel, {', '.join(layout.spatial)} of exactly {'x'.join(map(str, layout.fixed))}: "
                f"napari-bioflow brings every image to this size first (`classification.fit: {cfg.classification.fit}`: "
                "resize, or pad/crop around the centre); do the same before giving an image to another tool."
            ),
        ]
    lines += [
        "The input is the raw image; the preprocessing applies the training normalization. "
        + (
            "The output is the class probabilities (softmax included in the network)."
            if layout.output_id == "probabilities"
            else "The output is mapped back to the training targets' intensities by the postprocessing."
        ),
        "",
        "## Validation",
        "",
        (
            "The test tensors are a crop of a real image of the run (`test_input.npy`) and the PyTorch model's output "
            "on it; every weight format reproduced them in bioimageio.core's model test before this package was written."
        ),
        "",
        "## Weights",
        "",
    ]
    for fmt in converted.files:
        lines.append(f"- `{fmt}`: included")
    for fmt, why in converted.failed.items():
        lines.append(f"- `{fmt}`: not included ({why})")
    lines += [
        "",
        (
            "The `pytorch_state_dict` weights need napari-bioflow installed (the architecture is "
            "`napari_bioflow.engine.export.architecture.BioflowNet`); `torchscript` and `onnx` need only PyTorch or an "
            "ONNX runtime."
        ),
        "",
    ]
    doc = folder / "README.md"
    doc.write_text("\n".join(lines))
    return doc, attach


def environment_file(folder: Path) -> Path:
    """The conda environment of the PyTorch state dict weights: napari-bioflow provides the architecture."""
    import torch

    from ... import __version__

    path = folder / "environment.yaml"
    path.write_text(
        "name: napari-bioflow\nchannels:\n  - conda-forge\n  - nodefaults\ndependencies:\n  - python>=3.10\n"
        f"  - pip\n  - pip:\n      - torch=={torch.__version__.split('+')[0]}\n      - napari-bioflow=={__version__}\n"
    )
    return path
