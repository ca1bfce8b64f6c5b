"""Prediction: tiled sliding-window inference (sliding_window, tiling, accumulator, tta), whole images and folders
(inference, predictor), and classifier results (classification_results).

Re-exports what callers use from sliding_window. Those names load on first use (PEP 562), so importing a light
module such as predict.tiling or predict.inference does not import torch through this package."""

_FROM_SLIDING_WINDOW = (
    "BAND_BYTES",
    "PredictionCancelled",
    "TilePlan",
    "ZarrAccumulator",
    "argmax_labels",
    "plan_tiles",
    "prediction_plan",
    "sliding_window_predict",
    "write_labels_zarr",
)

__all__ = list(_FROM_SLIDING_WINDOW)


def __getattr__(name):
    if name in _FROM_SLIDING_WINDOW:
        from . import sliding_window

        return getattr(sliding_window, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
