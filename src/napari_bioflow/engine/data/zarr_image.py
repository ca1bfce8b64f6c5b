"""Which array of a zarr store is the image: never a guess among several.

    store.zarr                 an array: itself; an OME-Zarr group: its full resolution (level 0 of
                               `multiscales[0].datasets`, in zarr v2 `.zattrs` or under the v3/NGFF 0.5 `ome` key);
                               a group with exactly one array: that array
    store.zarr/raw             a path inside the store (`store.zarr/a/b` for nested groups): that array, or that
                               group read by the rules above

A group with several arrays and no multiscales metadata (`raw` and `mask` side by side) is refused with its arrays
listed and the path to give; so is a group whose arrays sit only in nested groups.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError

SHOWN = 6  # array names listed in a message


def zarr_store_of(path: Path) -> tuple[Path, str] | None:
    """(the .zarr store, the path inside it) when `path` is a zarr store or a path inside one, else None."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.suffix.lower() == ".zarr":
            return candidate, path.relative_to(candidate).as_posix() if candidate != path else ""
    return None


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _multiscales(group) -> list | None:
    attrs = dict(group.attrs)
    ome = attrs.get("ome")
    if isinstance(ome, dict) and ome.get("multiscales"):  # zarr v3, NGFF 0.5
        return ome["multiscales"]
    return attrs.get("multiscales") or None  # zarr v2 .zattrs, NGFF up to 0.4


def ome_axes(multiscale: dict, ndim: int) -> str | None:
    """The axes of an OME-Zarr multiscale as letters (c / channel -> C, t / time -> T, z, y, x), e.g. CZYX."""
    letters = []
    for axis in multiscale.get("axes") or []:
        name, kind = (axis, "") if isinstance(axis, str) else (str(axis.get("name", "")), str(axis.get("type", "")))
        letters.append("C" if kind == "channel" or name.lower() == "c" else "T" if kind == "time" else name[:1].upper())
    axes = "".join(letters)
    return axes if len(axes) == ndim and all(axes) else None


def _image_of_group(group, shown: str):
    """The image array of a group (see the module's rules); `shown` is the group's path in messages."""
    multiscales = _multiscales(group)
    if multiscales:
        try:
            level0 = multiscales[0]["datasets"][0]["path"]
        except (KeyError, IndexError, TypeError):
            raise InputError(
                f"{shown} has OME-Zarr multiscales metadata without a dataset path for its full "
                f"resolution (multiscales[0].datasets[0].path)."
            ) from None
        try:
            node = group[level0]
        except KeyError:
            raise InputError(
                f"{shown} names its full resolution {level0} in its OME-Zarr metadata, but the store holds "
                f"no array {level0}."
            ) from None
        if not hasattr(node, "shape"):
            raise InputError(
                f"{shown}: the full resolution {level0} named by its OME-Zarr metadata is a group, not an array."
            )
        from .axes import tag

        return tag(node, ome_axes(multiscales[0], len(node.shape)))
    arrays = sorted(group.array_keys())
    if len(arrays) == 1:
        return group[arrays[0]]
    if len(arrays) > 1:
        raise InputError(
            f"{shown} is a zarr group with several arrays ({_listed(arrays)}) and no OME-Zarr multiscales "
            f"metadata: append the array to use to the path, e.g. {shown}/{arrays[0]}."
        )
    nested = sorted(name for name, node in group.members(max_depth=None) if hasattr(node, "shape"))
    if nested:
        raise InputError(
            f"{shown} is a zarr group whose arrays sit in nested groups ({_listed(nested)}): give the "
            f"path of the array to use, e.g. {shown}/{nested[0]}."
        )
    raise InputError(f"{shown} is a zarr group with no array.")


def open_zarr_image(path: Path):
    """The zarr array `path` names (a store or a path inside one), opened read-only without loading it."""
    import zarr

    store, inner = zarr_store_of(path)
    try:
        root = zarr.open(str(store), mode="r")
    except FileNotFoundError:
        raise InputError(f"The zarr store {store} does not exist.") from None
    node = root
    if inner:
        if hasattr(root, "shape"):
            raise InputError(f"{store} is a single zarr array, so it holds no {inner}: give {store} itself.")
        try:
            node = root[inner]
        except KeyError:
            arrays = sorted(name for name, n in root.members(max_depth=None) if hasattr(n, "shape"))
            raise InputError(
                f"The zarr store {store} holds no array or group {inner}"
                + (f"; its arrays: {_listed(arrays)}." if arrays else ".")
            ) from None
    return node if hasattr(node, "shape") else _image_of_group(node, str(path))
