"""Write the notebooks of notebooks/ (one per workflow) from the cells below: `python scripts/make_notebooks.py`.

Each notebook drives the Python API (napari_bioflow.api) on the shipped sample data or tests/data, offline, with
small epoch counts (BIOFLOW_EPOCHS, default 2; raise it for a real model); runs go to BIOFLOW_OUTPUT (default
bioflow_runs/ beside the notebook). tests/test_notebooks.py executes them."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SETUP = """import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import tifffile

from napari_bioflow import api
from napari_bioflow.sample_data import sample_root

# small numbers so the notebook runs in seconds on a CPU: raise EPOCHS (and drop steps_per_epoch) for a real model
EPOCHS = int(os.environ.get("BIOFLOW_EPOCHS", 2))
OUT = Path(os.environ.get("BIOFLOW_OUTPUT", "bioflow_runs"))
TEST_DATA = Path(os.environ.get("BIOFLOW_TEST_DATA", Path.cwd().parent / "tests" / "data"))"""

HISTORY = """for row in run.history:
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if not k.startswith("iou_class")})
print("best checkpoint:", run.best_checkpoint)"""

NOTEBOOKS = {
    "semantic_segmentation_2d": [
        (
            "# Semantic segmentation, 2D\n\nTrain a U-Net on the BBBC007 nuclei sample (shipped with the plugin), "
            "predict its held-aside test images, read the run's IoU, and predict one more image given as a numpy array."
        ),
        SETUP,
        """root = sample_root() / "bbbc007_2d"
cfg = api.config(
    workflow="semantic_segmentation",
    name="nb_semantic_2d",
    output_dir=OUT,
    data={
        "train_raw": root / "train/raw", "train_label": root / "train/label",
        "test_raw": root / "test/raw", "test_label": root / "test/label",
        "patch_size": [128, 128], "val_split": 0.25,
    },
    model={"options": {"feature_maps": [8, 16, 32]}},
    train={"epochs": EPOCHS, "steps_per_epoch": 4, "batch_size": 4, "learning_rate": 3e-3},
)
run = api.train(cfg)""",
        HISTORY,
        "The test images were predicted into the run: IoU per image, per patch and over the set (`metrics.csv`).",
        """for row in run.metrics:
    print(row["image"], "foreground IoU", round(row["iou_foreground"], 3))
print(run.files("per_image_binarized"))""",
        "Predict an array (any image in memory, here a test image read with tifffile) with the best checkpoint:",
        """image = tifffile.imread(root / "test/raw" / "A9_A9_p5d.tif")
truth = tifffile.imread(root / "test/label" / "A9_A9_p5d.tif")
pred = api.predict(run.best_checkpoint, image, truth, name="nb_semantic_2d_array")
labels = pred.outputs["labels"]
print(labels.shape, pred.metrics, pred.results_dir)
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for ax, (title, im) in zip(axes, [("image", image), ("labels", labels), ("truth", truth)]):
    ax.imshow(im, cmap="gray"); ax.set_title(title); ax.axis("off")""",
    ],
    "semantic_segmentation_3d": [
        (
            "# Semantic segmentation, 3D\n\nA 3D U-Net on the cells3d nuclei sample (one 32x128x256 training volume "
            "and one test volume), trained a few steps and read back."
        ),
        SETUP,
        """root = sample_root() / "nuclei_3d"
cfg = api.config(
    workflow="semantic_segmentation",
    ndim=3,
    name="nb_semantic_3d",
    output_dir=OUT,
    data={
        "train_raw": root / "train/raw", "train_label": root / "train/label",
        "test_raw": root / "test/raw", "test_label": root / "test/label",
        "patch_size": [16, 64, 64], "val_split": 0.25,
    },
    model={"options": {"feature_maps": [8, 16]}},
    train={"epochs": EPOCHS, "steps_per_epoch": 2, "batch_size": 2, "learning_rate": 3e-3},
)
run = api.train(cfg)""",
        HISTORY,
        """for row in run.metrics:
    print(row["image"], "foreground IoU", round(row["iou_foreground"], 3))
labels = tifffile.imread(run.files("per_image_binarized")[0])
print("labels", labels.shape, "classes", np.unique(labels))""",
    ],
    "image_to_image_2d": [
        (
            "# Image to image, 2D\n\nLearn to predict the next frame of a fluorescence time-lapse (four consecutive "
            "160x160 frames in tests/data): frames t are the inputs, frames t+1 the targets, given as numpy arrays. "
            "The test metrics are PSNR, SSIM, MAE and MSE."
        ),
        SETUP,
        """frames = tifffile.imread(TEST_DATA / "timelapse_2d_consecutive.tif")  # (4, 160, 160)
images, targets = list(frames[:2]), list(frames[1:3])
cfg = api.config(
    workflow="image_to_image",
    name="nb_image_to_image_2d",
    output_dir=OUT,
    data={"patch_size": [64, 64]},
    model={"options": {"feature_maps": [8, 16]}},
    train={"epochs": EPOCHS, "steps_per_epoch": 4, "batch_size": 4, "learning_rate": 3e-3},
)
run = api.train(cfg, images, targets, val_images=[frames[2]], val_labels=[frames[3]])""",
        HISTORY,
        """pred = api.predict(run.best_checkpoint, frames[2], frames[3], name="nb_image_to_image_2d_test")
print({k: round(v, 4) for k, v in pred.metrics["image"].items()})
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for ax, (title, im) in zip(axes, [("frame t", frames[2]), ("predicted t+1", pred.outputs["image"][0]), ("frame t+1", frames[3])]):
    ax.imshow(im, cmap="gray"); ax.set_title(title); ax.axis("off")""",
    ],
    "self_supervised_crappify_2d": [
        (
            "# Self-supervised pretraining (crappify), 2D\n\nA U-Net learns to restore BBBC007 images degraded by noise "
            "and down/up-sampling (no labels). The test images are degraded the same way and the restoration is scored "
            "against the originals; the checkpoint can then start a segmentation model (`model.start_from`)."
        ),
        SETUP,
        """root = sample_root() / "bbbc007_2d"
cfg = api.config(
    workflow="self_supervised/crappify",
    name="nb_crappify_2d",
    output_dir=OUT,
    data={"train_raw": root / "train/raw", "test_raw": root / "test/raw", "patch_size": [64, 64], "val_split": 0.25},
    model={"name": "unet", "options": {"feature_maps": [8, 16]}},
    train={"epochs": EPOCHS, "steps_per_epoch": 4, "batch_size": 4, "learning_rate": 3e-3},
)
run = api.train(cfg)""",
        HISTORY,
        """for row in run.metrics:
    print(row["image"], "PSNR restored", round(row["psnr"], 2), "dB; degraded input", round(row["psnr_degraded_input"], 2), "dB")
print([p.name for p in run.files("degraded")])""",
        "The pretrained weights start a segmentation U-Net of the same shape:",
        """seg = api.config(
    workflow="semantic_segmentation",
    name="nb_crappify_downstream",
    output_dir=OUT,
    data={"train_raw": root / "train/raw", "train_label": root / "train/label", "patch_size": [64, 64], "val_split": 0.25},
    model={"options": {"feature_maps": [8, 16]}, "start_from": run.best_checkpoint},
    train={"epochs": 1, "steps_per_epoch": 2, "batch_size": 4},
)
downstream = api.train(seg)
print(downstream.history[-1]["iou_foreground"])""",
    ],
    "classification_2d": [
        (
            "# Classification, 2D\n\nA small CNN tells four imaging modalities apart (crops of real microscopy in "
            "tests/data/classification_2d: one sub-folder per class), then classifies the test folder and one array."
        ),
        SETUP,
        """data = TEST_DATA / "classification_2d"
cfg = api.config(
    workflow="classification",
    name="nb_classification_2d",
    output_dir=OUT,
    model={"name": "simple_cnn"},
    data={"train_raw": data / "train", "test_raw": data / "test", "patch_size": [48, 48], "val_split": 0.2},
    train={"epochs": EPOCHS, "batch_size": 16},
)
run = api.train(cfg)""",
        HISTORY,
        """print(run.config.class_names)
print(run.metrics)
print(run.predictions[:3])""",
        """from skimage.io import imread

image = imread(next((data / "test" / "he_histology").glob("*.png")))
pred = api.predict(run.best_checkpoint, image)
print(pred.classes[0]["class"], round(pred.classes[0]["confidence"], 3))""",
    ],
}


def main(folder: Path = Path(__file__).parents[1] / "notebooks") -> None:
    folder.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(
            cells=[new_markdown_cell(c) if c.startswith("#") or not _is_code(c) else new_code_cell(c) for c in cells],
            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        )
        nbformat.write(nb, folder / f"{name}.ipynb")


def _is_code(cell: str) -> bool:
    return any(token in cell for token in ("=", "print(", "import "))


if __name__ == "__main__":
    main()
