"""The model description (bioimageio.spec 0.5, its current format version) of an exported checkpoint: tensors with
their axes, the normalization as the spec's preprocessing, the output's mapping back to intensities as its
postprocessing, tile sizes and halo, and the weights with the files written beside them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

INPUT_ID = "raw"
SPATIAL = ("z", "y", "x")


@dataclass
class Layout:
    """What the tensors look like: computed from the checkpoint (see engine/export/exporter.py)."""

    ndim: int
    in_channels: int
    out_channels: int
    dense: bool  # a value per pixel (else one vector per image: a classifier)
    divisors: tuple[int, ...]  # per spatial axis: input sizes are multiples of it
    minimum: tuple[int, ...]  # per spatial axis: the smallest input
    halo: tuple[int, ...]  # per spatial axis: output pixels to crop each side of a tile
    fixed: tuple[int, ...] | None  # a classifier's input size (its patch size)
    offset: list[float]  # input normalization x -> (x - offset) / scale, per channel (None: no normalization)
    scale: list[float]
    normalized: bool
    output_id: str  # "probabilities" or "image"
    output_names: list[str]  # channel names of the output
    out_offset: list[float] | None = None  # the output mapped back to intensities: y * out_scale + out_offset
    out_scale: list[float] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def spatial(self) -> tuple[str, ...]:
        return SPATIAL[-self.ndim :]


def identifier(text: str, fallback: str) -> str:
    """A spec Identifier (letters, digits, '_', starting with a letter) from a free-form name."""
    out = re.sub(r"[^A-Za-z0-9_]", "_", str(text)).strip("_")
    return out if out and out[0].isalpha() else f"{fallback}_{out}" if out else fallback


def _channel_names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


NAME_CHARACTERS = "letters, digits, spaces and _+-()"


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a package name (the spec allows letters, digits, spaces and _+-()), else None."""
    if not re.fullmatch(r"[A-Za-z0-9_+\- ()]{5,128}", name or ""):
        return f"the model name {name!r} may hold only {NAME_CHARACTERS}, 5 to 128 of them"
    return None


def parse_cite(entry: str) -> tuple[str, str]:
    """(text, DOI or URL) of a citation given as "DOI", "URL" or "TEXT: DOI-or-URL"; ValueError for text alone."""
    entry = entry.strip()
    text, sep, link = entry.rpartition(" ")
    link = link.strip()
    if not re.match(r"^(https?://\S+|(doi:)?10\.\d{4,9}/\S+)$", link):
        raise ValueError(f"citation {entry!r} needs a DOI (10.xxxx/...) or a URL at its end")
    link = link.removeprefix("doi:")
    return (text.strip().rstrip(":").strip() if sep else "") or link, link


def input_tensor(layout: Layout, test_file: Path, sample_file: Path | None):
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        BatchAxis,
        ChannelAxis,
        EnsureDtypeDescr,
        EnsureDtypeKwargs,
        FileDescr,
        FixedZeroMeanUnitVarianceAlongAxisKwargs,
        FixedZeroMeanUnitVarianceDescr,
        Identifier,
        InputTensorDescr,
        ParameterizedSize,
        ScaleLinearAlongAxisKwargs,
        ScaleLinearDescr,
        SpaceInputAxis,
        TensorId,
    )

    axes = [BatchAxis(), ChannelAxis(channel_names=[Identifier(c) for c in _channel_names("c", layout.in_channels)])]
    for i, name in enumerate(layout.spatial):
        size = (
            layout.fixed[i]
            if layout.fixed is not None
            else ParameterizedSize(min=layout.minimum[i], step=layout.divisors[i])
        )
        axes.append(SpaceInputAxis(id=AxisId(name), size=size, concatenable=layout.dense))
    pre = [EnsureDtypeDescr(kwargs=EnsureDtypeKwargs(dtype="float32"))]
    if layout.normalized:
        if min(layout.scale) >= 1e-6:
            kwargs = FixedZeroMeanUnitVarianceAlongAxisKwargs(
                axis=AxisId("channel"), mean=list(layout.offset), std=list(layout.scale)
            )
            pre.append(FixedZeroMeanUnitVarianceDescr(kwargs=kwargs))
        else:  # the spec's std must be >= 1e-6: the same map as a gain and an offset
            gain = [1.0 / s for s in layout.scale]
            pre.append(
                ScaleLinearDescr(
                    kwargs=ScaleLinearAlongAxisKwargs(
                        axis=AxisId("channel"), gain=gain, offset=[-o * g for o, g in zip(layout.offset, gain)]
                    )
                )
            )
    return InputTensorDescr(
        id=TensorId(INPUT_ID),
        description="the raw image, channel axis first; intensities as acquired (normalized by the preprocessing)",
        axes=axes,
        test_tensor=FileDescr(source=test_file),
        sample_tensor=FileDescr(source=sample_file) if sample_file is not None else None,
        preprocessing=pre,
    )


def output_tensor(layout: Layout, test_file: Path):
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        BatchAxis,
        ChannelAxis,
        FileDescr,
        Identifier,
        OutputTensorDescr,
        ScaleLinearAlongAxisKwargs,
        ScaleLinearDescr,
        SizeReference,
        SpaceOutputAxis,
        SpaceOutputAxisWithHalo,
        TensorId,
    )

    axes = [BatchAxis(), ChannelAxis(channel_names=[Identifier(c) for c in layout.output_names])]
    if layout.dense:
        for i, name in enumerate(layout.spatial):
            ref = SizeReference(tensor_id=TensorId(INPUT_ID), axis_id=AxisId(name))
            if layout.halo[i] > 0:
                axes.append(SpaceOutputAxisWithHalo(id=AxisId(name), size=ref, halo=layout.halo[i]))
            else:
                axes.append(SpaceOutputAxis(id=AxisId(name), size=ref))
    post = []
    if layout.out_scale is not None:
        post.append(
            ScaleLinearDescr(
                kwargs=ScaleLinearAlongAxisKwargs(
                    axis=AxisId("channel"), gain=list(layout.out_scale), offset=list(layout.out_offset)
                )
            )
        )
    what = (
        "class probabilities (softmax over the channel axis)"
        if layout.output_id == "probabilities"
        else "the predicted image, in the intensities of the training targets"
    )
    return OutputTensorDescr(
        id=TensorId(layout.output_id),
        description=what,
        axes=axes,
        test_tensor=FileDescr(source=test_file),
        postprocessing=post,
    )


def weights_descr(files: dict[str, Path], arch_kwargs: dict, opset: int, environment: Path | None):
    import torch
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromLibraryDescr,
        FileDescr,
        Identifier,
        OnnxWeightsDescr,
        PytorchStateDictWeightsDescr,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )

    version = Version(torch.__version__.split("+")[0])
    entries = {}
    if "pytorch_state_dict" in files:
        entries["pytorch_state_dict"] = PytorchStateDictWeightsDescr(
            source=files["pytorch_state_dict"],
            architecture=ArchitectureFromLibraryDescr(
                callable=Identifier("BioflowNet"),
                import_from="napari_bioflow.engine.export.architecture",
                kwargs=arch_kwargs,
            ),
            pytorch_version=version,
            dependencies=FileDescr(source=environment) if environment is not None else None,
        )
    parent = "pytorch_state_dict" if "pytorch_state_dict" in files else None
    if "torchscript" in files:
        entries["torchscript"] = TorchscriptWeightsDescr(
            source=files["torchscript"], pytorch_version=version, parent=parent
        )
    if "onnx" in files:
        entries["onnx"] = OnnxWeightsDescr(source=files["onnx"], opset_version=opset, parent=parent)
    return WeightsDescr(**entries)


def model_descr(
    *,
    name: str,
    description: str,
    layout: Layout,
    files: dict[str, Path],
    opset: int,
    arch_kwargs: dict,
    tests: tuple[Path, Path],
    sample: Path | None,
    cover: Path,
    documentation: Path,
    attachments: list[Path],
    environment: Path | None,
    authors: list[str],
    licence: str,
    cite: list[str],
    tags: list[str],
    config: dict,
):
    """The ModelDescr of a package whose files lie in one folder (packaged by save_bioimageio_package)."""
    from bioimageio.spec.model.v0_5 import (
        Author,
        CiteEntry,
        Doi,
        FileDescr,
        HttpUrl,
        LicenseId,
        ModelDescr,
        Version,
    )

    cites = []
    for c in cite:
        text, link = parse_cite(c)
        doi = re.match(r"^(?:https?://(?:dx\.)?doi\.org/)?(10\.\d{4,9}/\S+)$", link)
        cites.append(CiteEntry(text=text, doi=Doi(doi.group(1))) if doi else CiteEntry(text=text, url=HttpUrl(link)))
    return ModelDescr(
        name=name,
        description=description,
        authors=[Author(name=a) for a in authors],
        cite=cites,
        license=LicenseId(licence),
        version=Version("0.1.0"),
        documentation=FileDescr(source=documentation),
        covers=[FileDescr(source=cover)],
        attachments=[FileDescr(source=a) for a in attachments],
        tags=tags,
        inputs=[input_tensor(layout, tests[0], sample)],
        outputs=[output_tensor(layout, tests[1])],
        weights=weights_descr(files, arch_kwargs, opset, environment),
        config=config,
    )
