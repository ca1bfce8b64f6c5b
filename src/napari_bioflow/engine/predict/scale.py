"""The physical scale of an image to predict, for the outputs that carry one (OME-Zarr).

Where it comes from, first found wins:
1. the config's `predict.pixel_size` ((Z,)Y,X, micrometres);
2. the napari layer's scale (the Predict dock hands it over, with the layer's units when napari has them);
3. the input file's metadata: OME-TIFF PhysicalSizeX/Y/Z (with their units), an ImageJ TIFF's X/Y resolution
   and `spacing` (its `unit`), an OME-Zarr input's scale of its full resolution (with the axes' units);
4. none: 1 per axis and no unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# OME-XML and ImageJ unit words -> the UDUNITS-2 names NGFF asks for
UNITS = {
    "µm": "micrometer",
    "um": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "micrometer": "micrometer",
    "micrometre": "micrometer",
    "nm": "nanometer",
    "nanometer": "nanometer",
    "mm": "millimeter",
    "millimeter": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "meter": "meter",
    "å": "angstrom",
    "angstrom": "angstrom",
}


@dataclass(frozen=True)
class PhysicalScale:
    """Size of a pixel per spatial axis ((Z,)Y,X), its unit (an NGFF unit name, or None) and where it came from."""

    values: tuple[float, ...]
    unit: str | None = None
    source: str = "none"

    @classmethod
    def unit_less(cls, ndim: int) -> PhysicalScale:
        return cls((1.0,) * ndim)


def ngff_unit(word) -> str | None:
    """An NGFF (UDUNITS-2) unit name for a unit word of OME-XML, ImageJ or napari; None when unknown or pixels."""
    if word is None:
        return None
    text = str(word).strip()
    if text.lower() in ("", "pixel", "pixels", "dimensionless", "none"):
        return None
    return UNITS.get(text, UNITS.get(text.lower()))


def _ome_tiff_scale(tif, ndim: int) -> PhysicalScale | None:
    import tifffile

    try:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        pixels = (pixels[0] if isinstance(pixels, list) else pixels)["Pixels"]
    except (KeyError, TypeError, IndexError, ValueError):
        return None
    axes = "ZYX"[-ndim:]
    if not all(f"PhysicalSize{a}" in pixels for a in axes if a != "Z") or (ndim == 3 and "PhysicalSizeZ" not in pixels):
        return None
    values = tuple(float(pixels[f"PhysicalSize{a}"]) for a in axes)
    unit = ngff_unit(pixels.get("PhysicalSizeXUnit", "µm"))
    return PhysicalScale(values, unit, "OME-TIFF metadata")


def _imagej_scale(tif, ndim: int) -> PhysicalScale | None:
    meta = tif.imagej_metadata or {}
    page = tif.pages[0]
    try:
        xr, yr = page.tags["XResolution"].value, page.tags["YResolution"].value
    except KeyError:
        return None
    x, y = xr[1] / xr[0], yr[1] / yr[0]  # (pixels, per unit) -> unit per pixel
    if not meta and (x, y) == (1.0, 1.0):
        return None
    values = (y, x) if ndim == 2 else (float(meta.get("spacing", 1.0)), y, x)
    return PhysicalScale(tuple(float(v) for v in values), ngff_unit(meta.get("unit")), "ImageJ TIFF metadata")


def _zarr_scale(path: Path, ndim: int) -> PhysicalScale | None:
    import zarr

    from ..data.zarr_image import _multiscales, zarr_store_of

    store, inner = zarr_store_of(path)
    try:
        node = zarr.open(str(store), mode="r")
        node = node[inner] if inner else node
        multiscales = None if hasattr(node, "shape") else _multiscales(node)
        if not multiscales:
            return None
        axes = multiscales[0].get("axes") or []
        scale = next(
            t["scale"]
            for t in multiscales[0]["datasets"][0].get("coordinateTransformations", [])
            if t.get("type") == "scale"
        )
    except (KeyError, StopIteration, TypeError, IndexError, FileNotFoundError):
        return None
    kinds = [(a.get("type") if isinstance(a, dict) else None) for a in axes]
    spatial = [i for i, k in enumerate(kinds) if k == "space"] or list(range(len(scale)))[-ndim:]
    spatial = spatial[-ndim:]
    if len(spatial) != ndim or len(scale) <= max(spatial):
        return None
    unit = axes[spatial[-1]].get("unit") if axes and isinstance(axes[spatial[-1]], dict) else None
    return PhysicalScale(tuple(float(scale[i]) for i in spatial), ngff_unit(unit), "OME-Zarr metadata")


def scale_of_file(path, ndim: int) -> PhysicalScale | None:
    """The physical scale an input file records, or None (no metadata, unreadable metadata, not a TIFF or zarr)."""
    from ..data.zarr_image import zarr_store_of

    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                if tif.is_ome:
                    return _ome_tiff_scale(tif, ndim)
                return _imagej_scale(tif, ndim) if tif.is_imagej else None
        if zarr_store_of(path) is not None:
            return _zarr_scale(path, ndim)
    except (OSError, ValueError):
        return None
    return None


def resolve_scale(cfg, layer_scale=None, layer_units=None, path=None) -> PhysicalScale:
    """The scale of one input (see the module's description): config, layer, file, none."""
    ndim = cfg.ndim
    if cfg.predict.pixel_size:
        return PhysicalScale(tuple(float(v) for v in cfg.predict.pixel_size), "micrometer", "predict.pixel_size")
    if layer_scale is not None:
        values = tuple(float(v) for v in list(layer_scale)[-ndim:])
        units = list(layer_units)[-ndim:] if layer_units is not None else []
        unit = ngff_unit(units[-1]) if units else None
        if len(values) == ndim:
            return PhysicalScale(values, unit, "the layer's scale")
    if path is not None:
        found = scale_of_file(path, ndim)
        if found is not None:
            return found
    return PhysicalScale.unit_less(ndim)
