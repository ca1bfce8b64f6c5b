"""What a workflow declares for the front ends: its outputs (how each is shown) and the words its metrics take.

The CLI, the docks, the preview and batch read these declarations from the workflow (engine/workflows/base.py)
instead of knowing the workflows by name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Output:
    """One output of a predicted image, as a viewer shows it.

    key: its name in ImageResult.outputs (a zarr array or an array-like, channel first for images);
    suffix: the layer is named "<image> <suffix>";
    layer: "image" or "labels";
    colormap: an Image layer's colormap;
    contrast: "unit" (0 to 1), "source" (the input layer's limits: same intensities) or "target" (the target's
    normalization range), for Image layers;
    live: shown while the tiles are computed, from the running prediction (`live_channels`: which of its channels;
    "labels": the argmax of the running probabilities);
    class_axis: the data keep a leading class axis (probabilities);
    opacity: the layer's opacity;
    below: the key of the output this one is inserted under (the grid view then reads source, this, that);
    folder: where its files go (engine/predict/writer.py: "image" = per_image/ or full_image/, "binarized",
    "post_processing", or a folder of its own such as "degraded");
    from_prediction: the output is the blended prediction itself (probabilities), so an OME-Zarr output is written
    tile by tile straight into its image.
    """

    key: str
    suffix: str
    layer: str = "image"
    colormap: str = "gray"
    contrast: str = "target"
    live: bool = False
    class_axis: bool = False
    opacity: float = 1.0
    below: str = ""
    folder: str = "image"
    from_prediction: bool = False


@dataclass(frozen=True)
class Metric:
    """How a metric is shown: 'PSNR 23.41 dB'."""

    label: str
    unit: str = ""

    def format(self, value: float) -> str:
        return f"{self.label} {value:.2f}{self.unit}" if self.unit else f"{self.label} {value:.3f}"


# the words every workflow's metrics take in the docks and the CLI's summaries
METRICS = {
    "psnr": Metric("PSNR", " dB"),
    "ssim": Metric("SSIM"),
    "mae": Metric("MAE"),
    "mse": Metric("MSE"),
    "psnr_degraded_input": Metric("PSNR of the degraded input", " dB"),
    "psnr_masked_patches": Metric("PSNR on the hidden patches", " dB"),
    "iou_foreground": Metric("IoU (foreground)"),
    "iou_mean": Metric("mean IoU"),
    "iou_patch_foreground": Metric("IoU per patch (foreground)"),
    "iou_patch_mean": Metric("mean IoU per patch"),
    "iou_foreground_post_processing": Metric("IoU (foreground) after post-processing"),
    "iou_mean_post_processing": Metric("mean IoU after post-processing"),
    "accuracy": Metric("accuracy"),
}


def metric(key: str) -> Metric:
    return METRICS.get(key, Metric(key.replace("_", " ")))
