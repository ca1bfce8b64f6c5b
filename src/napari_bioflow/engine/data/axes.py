"""Which axis of an image holds its channels: from the config (`data.axes`), the file's metadata (OME-TIFF or ImageJ
axes through tifffile, OME-Zarr multiscales axes) or the channel count the config gives (`data.in_channels`); never
from the length of an axis alone, so a multiplexed image of 5 to 40 channels is read as channels, not as space.

    data.axes given                    it describes every raw image (C, Z, Y, X in any order; no C: one channel)
    metadata with a channel axis       C (or S, a TIFF's samples such as RGB) is the channel axis; other axes of
                                       length 1 (T, Q) are dropped; the rest is space, in file order
    neither                            with (Z,)Y,X axes only: one channel; with one more axis: the last or else the
                                       first whose length is data.in_channels (the last when both are)

Images leave as (Z,)Y,X,C (numpy views or dask: nothing is loaded). A mismatch is one sentence naming the image.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

AXES_ATTR = "bioflow_axes"  # set by the readers (io.open_image) on an array whose file says what its axes are
RGB_LIKE = 4  # only for wording a refusal: a last axis this short looks like colour channels (RGB, RGBA)
SPATIAL = "ZYX"


def axes_problem(axes: str, in_channels: int, ndim: int | None = None) -> str | None:
    """Why `axes` (data.axes) cannot describe images of `in_channels` channels (and `ndim` spatial axes), or None."""
    if len(set(axes)) != len(axes) or not set(axes) <= set("CZYX") or not {"Y", "X"} <= set(axes):
        return f"data.axes {axes!r} must name each of Y and X once, optionally Z and C, e.g. CYX, YXC, CZYX or ZYXC"
    if "C" not in axes and in_channels != 1:
        return f"data.axes {axes} has no C axis, but data.in_channels is {in_channels}: add C where the channels are"
    spatial = len(axes) - ("C" in axes)
    if ndim is not None and spatial != ndim:
        return f"data.axes {axes} has {spatial} spatial axes but ndim is {ndim}"
    return None


def metadata_axes(arr) -> str | None:
    return getattr(arr, AXES_ATTR, None)


def tag(arr, axes: str | None):
    """`arr` carrying the axes its file names (kept through lazy_array); returned for chaining."""
    if axes:
        try:
            setattr(arr, AXES_ATTR, axes.upper())
        except (AttributeError, TypeError):  # a type that takes no attributes: its axes are then inferred
            pass
    return arr


def _dims(shape) -> str:
    return "x".join(map(str, shape))


def _arrange(arr, keep: list[int], channel: int | None):
    """Drop the length-1 axes not in `keep` (space, in order) or `channel`, and move the channel axis last."""
    from .sources import lazy_array

    shape = tuple(arr.shape)
    drop = [i for i in range(len(shape)) if i not in keep and i != channel]
    out = lazy_array(arr)
    if drop:
        out = out[tuple(0 if i in drop else slice(None) for i in range(len(shape)))]
        kept = [i for i in range(len(shape)) if i not in drop]
        keep, channel = [kept.index(i) for i in keep], None if channel is None else kept.index(channel)
    order = keep + ([channel] if channel is not None else [])
    if order != list(range(len(order))):
        out = out.transpose(order)
    return out if channel is not None else out[..., None]


def _from_config(arr, axes: str, ndim: int, in_channels: int, name: str):
    shape = tuple(arr.shape)
    problem = axes_problem(axes, in_channels, ndim)
    if problem:
        raise InputError(f"{name}: {problem}.")
    if len(axes) != len(shape):
        raise InputError(
            f"{name} has shape {_dims(shape)} ({len(shape)} axes), but data.axes {axes} names {len(axes)} axes."
        )
    channel = axes.index("C") if "C" in axes else None
    got = shape[channel] if channel is not None else 1
    if got != in_channels:
        raise InputError(
            f"{name} has {got} channel(s) on its axis C (data.axes {axes}) but data.in_channels is {in_channels}."
        )
    return _arrange(arr, [axes.index(a) for a in SPATIAL if a in axes], channel)


def _from_metadata(arr, axes: str, ndim: int, in_channels: int, name: str, source: str):
    """The image arranged by its file's axes, or None when they say nothing usable (no channel axis, or space that
    does not fit ndim): the axes are then inferred."""
    shape = tuple(arr.shape)
    if len(axes) != len(shape):
        return None
    channels = [i for i, a in enumerate(axes) if a in "CS"]
    if len(channels) != 1:
        return None
    (channel,) = channels
    space = [i for i in range(len(shape)) if i != channel]
    while len(space) > ndim and any(shape[i] == 1 and axes[i] not in "YX" for i in space):
        space.remove(next(i for i in space if shape[i] == 1 and axes[i] not in "YX"))
    if len(space) != ndim:
        if len(space) not in (2, 3):  # e.g. a time axis: the axes are then inferred (and refused in their words)
            return None
        raise InputError(
            f"{name} has shape {_dims(shape)}: its {axes} metadata makes it {len(space)}D with {shape[channel]} "
            f"channel(s), but the config is {ndim}D (set ndim: {len(space)})."
        )
    if shape[channel] != in_channels:
        raise InputError(
            f"{name} has {shape[channel]} channel(s) (axis {axes[channel]} of its {axes} metadata) but "
            f"{source or 'the config'} expects {in_channels}{'' if source else ' (data.in_channels)'}."
        )
    return _arrange(arr, space, channel)


def _inferred(arr, ndim: int, in_channels: int, name: str, source: str):
    shape, dims = tuple(arr.shape), _dims(arr.shape)
    expects = f"{source or 'the config'} expects {in_channels}{'' if source else ' (data.in_channels)'}"
    if len(shape) < ndim:
        raise InputError(f"{name} has shape {dims}: that is 2D data, but the config is 3D (set ndim: 2).")
    if len(shape) == ndim:
        if ndim == 3 and in_channels > 1 and in_channels in (shape[0], shape[-1]):
            raise InputError(
                f"{name} has shape {dims}: that looks like a 2D image with {in_channels} channels, but the config "
                f"is 3D."
            )
        if in_channels != 1:
            raise InputError(f"{name} has 1 channel(s) but {expects}.")
        return _arrange(arr, list(range(ndim)), None)
    if len(shape) == ndim + 1:
        if shape[-1] == in_channels:
            return _arrange(arr, list(range(ndim)), ndim)
        if shape[0] == in_channels:
            return _arrange(arr, list(range(1, ndim + 1)), 0)
        short = shape[-1] if shape[-1] <= RGB_LIKE else shape[0] if shape[0] <= RGB_LIKE else None
        if short is not None:
            raise InputError(f"{name} has {short} channel(s) but {expects}.")
        if in_channels == 1:
            raise InputError(
                f"{name} has shape {dims}: that is {len(shape)}D data, but the config is {ndim}D (set ndim: "
                f"{len(shape)}; or, if an axis holds channels, data.in_channels to its length)."
            )
        raise InputError(
            f"{name} has shape {dims}: neither its first nor its last axis holds the {in_channels} channels "
            f"{source or 'the config'} expects; give data.axes (e.g. ZCYX) if they sit elsewhere."
        )
    if shape[0] == 1:  # leading axes of length 1 (a T or C of an OME-Zarr): dropped
        from .sources import lazy_array

        return _inferred(lazy_array(arr)[0], ndim, in_channels, name, source)
    raise InputError(f"{name} has shape {dims}: too many axes for {ndim}D images with channels.")


def channels_last(arr, ndim: int, in_channels: int, name: str, source: str = "", axes: str | None = None):
    """`arr` as (Z,)Y,X,C by the module's rules: `axes` (data.axes) first, then the file's metadata, then the
    channel count. `source`: what fixed `in_channels` when it is not the config, for the message."""
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name} has data type {arr.dtype}; images must hold integer or floating-point values.")
    if axes:
        return _from_config(arr, axes.upper(), ndim, in_channels, name)
    meta = metadata_axes(arr)
    if meta:
        out = _from_metadata(arr, meta, ndim, in_channels, name, source)
        if out is not None:
            return out
    return _inferred(arr, ndim, in_channels, name, source)
