"""The sections of the run config (data, model, train, predict, self_supervised, classification)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RULE = "letters, digits, '-', '_' and '.', not only dots, at most 200 characters"
_NAME_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def run_name_problem(name) -> str | None:
    """Why `name` cannot be an experiment name, else None. The name is a folder under output_dir and the start of
    file names, so it must stay one path component: no separators, no '.' or '..', no control characters."""
    if not isinstance(name, str) or not name:
        return f"the experiment name is empty; it may hold {NAME_RULE}"
    if len(name) > 200 or not set(name) <= _NAME_CHARACTERS or set(name) == {"."}:
        return f"the experiment name {name!r} may hold only {NAME_RULE}"
    return None


class _Section(BaseModel):
    # unknown keys are typos in a YAML file: refuse them rather than silently ignore them
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    train_raw: Path | None = Field(
        None,
        description="Folder of training raw images (TIFF, PNG or zarr), paired with train_label by file name (img_1 pairs with img_01; a suffix every label has, such as _mask, is allowed); one image, or an array inside a zarr store (store.zarr/raw), may be given instead of a folder. Classification: a folder with one sub-folder of images per class.",
    )
    train_label: Path | None = Field(
        None,
        description="Folder of training labels (segmentation: one integer class per pixel/voxel, 0 = background) or target images (image-to-image). Not used by self-supervision.",
    )
    val_raw: Path | None = Field(
        None, description="Folder of validation raw images. When empty, val_split of the training data is held aside."
    )
    val_label: Path | None = Field(None, description="Folder of validation label images, paired with val_raw.")
    val_split: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Fraction of the training data held aside for validation when no validation folder is given: whole images when there are several, else a strip at the end of the single image.",
    )
    test_raw: Path | None = Field(
        None,
        description="Folder of test raw images predicted after training (or by `predict`). Classification: class sub-folders named after the classes (then metrics are computed), or without classes any layout, one folder or images spread over sub-folders (predictions only).",
    )
    test_label: Path | None = Field(
        None,
        description="Optional folder of test labels or targets, paired with test_raw by file name: when given, the "
        "workflow's test metrics are computed per image and over the set (segmentation: IoU; image to image and "
        "crappify: PSNR and SSIM). Classification takes the classes from test_raw's class sub-folders instead.",
    )
    patch_size: list[int] = Field(
        [256, 256], description="Patch size in pixels, (Y, X) in 2D or (Z, Y, X) in 3D. Must not exceed the images."
    )
    in_channels: int = Field(1, ge=1, description="Number of channels of the raw images (grayscale = 1, RGB = 3).")
    target_channels: int = Field(1, ge=1, description="Image-to-image: number of channels of the target images.")
    axes: str | None = Field(
        None,
        description="Axes of the raw images, e.g. CYX, YXC, CZYX, ZYXC or ZCYX (C = channels, none = one channel; as many spatial axes as ndim). Empty = from each file's metadata (OME-TIFF/ImageJ axes, OME-Zarr axes), else the first or last axis whose length is in_channels. Set it when the channels sit elsewhere or a file is ambiguous.",
    )
    normalization: Literal["percentile", "meanstd", "custom", "none"] = Field(
        "percentile",
        description="percentile: scale each channel so its low/high percentiles of the training data map to 0/1; meanstd: subtract the training mean and divide by the standard deviation; custom: subtract custom_mean and divide by custom_std (given values; image-to-image targets use their own mean/std), written as normalization_mean_value.npy / normalization_std_value.npy in the run's results folder; none: use raw values. The statistics are stored in the checkpoint and reused at prediction. Default: the workflow's (meanstd for image to image, percentile for the others).",
    )
    custom_mean: list[float] | float | Path | None = Field(
        None,
        description="normalization: custom: the mean subtracted, one number for every channel, one per channel, or a .npy file holding either.",
    )
    custom_std: list[float] | float | Path | None = Field(
        None,
        description="normalization: custom: the standard deviation divided by (positive), one number, one per channel, or a .npy file.",
    )
    percentile_low: float = Field(1.0, ge=0, le=100, description="Low percentile for percentile normalization.")
    percentile_high: float = Field(99.8, ge=0, le=100, description="High percentile for percentile normalization.")
    foreground_sampling: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Probability that a training patch is centred on a foreground (non-background) pixel rather than drawn uniformly. Helps with sparse objects.",
    )
    save_prob_map: bool = Field(
        False,
        description="Write each training image's patch-sampling probability map (the chance that a patch is centred on each pixel, given that image is drawn: foreground_sampling on the labels' foreground, the rest uniform; sums to 1) as a float32 TIFF of the image's (Z,)Y,X shape to results/<run>/prob_map/ at the start of training. Only for training data drawn as patches.",
    )
    multiple_raw: bool = Field(
        False,
        description="Image to image (and segmentation): several raw images per target. train_raw (and val_raw) then hold one sub-folder per sample with its raw images, each paired with the sample's one target in train_label: an image named after the sub-folder, or a sub-folder of that name holding one image (BiaPy's MULTIPLE_RAW_ONE_TARGET_LOADER). Validation holds aside whole samples.",
    )

    @field_validator("custom_mean", "custom_std", mode="before")
    @classmethod
    def _numbers_in_text(cls, v):
        """Text as a dock or --set gives it: '0.5' a number, '1, 2.5, 3' (or '[1, 2.5, 3]') one per channel, else a
        file path."""
        if not isinstance(v, str):
            return v
        text = v.strip().strip("[]")
        if not text:
            return None
        try:
            values = [float(t) for t in text.replace(",", " ").split()]
        except ValueError:
            return v.strip()
        return values[0] if len(values) == 1 else values

    @field_validator("axes")
    @classmethod
    def _axes_letters(cls, v):
        return v.strip().upper() or None if isinstance(v, str) else v

    @model_validator(mode="after")
    def _data_consistent(self):
        from ..engine.data.axes import axes_problem

        if self.axes and (problem := axes_problem(self.axes, self.in_channels)):
            raise ValueError(problem)
        if self.normalization == "custom" and (self.custom_mean is None or self.custom_std is None):
            raise ValueError("normalization: custom needs data.custom_mean and data.custom_std (numbers or .npy files)")
        return self


class ModelConfig(_Section):
    name: str = Field(
        "unet",
        description="Model from the registry; `napari-bioflow models` lists every model under the workflows it fits "
        "(e.g. segmentation: unet, resunet, attention_unet, seunet, resunet_se, resunet++, multiresunet, unext_v1, "
        "unetr, unetr_mini/small/base; image to image adds edsr, rcan, dfcan, wdsr; masking: mae, mae_vit_base; "
        "classification: vit, simple_cnn, efficientnet_b0..b7).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Model options, e.g. feature_maps: [16, 32, 64, 128, 256], norm: instance|batch|group|none, activation: elu|relu|leaky_relu|gelu|silu, dropout: 0.1. Empty = the model's defaults (BiaPy's default U-Net); image-to-image and self-supervised U-Nets default to norm: none, since instance norm erases the brightness they must restore.",
    )
    start_from: Path | None = Field(
        None,
        description="A checkpoint whose matching weights start this model (transfer learning); the rest is initialised.",
    )


class TrainConfig(_Section):
    enable: bool = Field(True, description="Train the model. Set false to only predict with `checkpoint`.")
    epochs: int = Field(100, ge=1, description="Maximum number of epochs.")
    patience: int = Field(
        20,
        ge=0,
        description="Stop when the validation loss has not improved for this many epochs (0 = never stop early).",
    )
    batch_size: int = Field(4, ge=1, description="Patches per training step.")
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Training steps per epoch. Empty = enough steps to see the training data's area once."
    )
    optimizer: Literal["ADAM", "ADAMW", "SGD"] = Field("ADAMW", description="Optimizer.")
    learning_rate: float = Field(
        1e-3,
        gt=0,
        description="Initial (peak) learning rate. Default: the workflow's (1e-4 for classification, 1e-3 for the others).",
    )
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (L2 for ADAM/SGD, decoupled for ADAMW).")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum for SGD.")
    scheduler: Literal["none", "reduce_on_plateau", "one_cycle", "warmup_cosine"] = Field(
        "none",
        description="Learning-rate schedule: none (a constant rate; with train.ema the default that learned fastest in benchmarks/bench_quality.py), reduce_on_plateau (halve on a validation-loss plateau), one_cycle, warmup_cosine (linear warm-up then cosine decay over train.epochs).",
    )
    warmup_epochs: int = Field(1, ge=0, description="Warm-up epochs for warmup_cosine.")
    loss: Literal["auto", "ce", "ce_dice", "l1", "mse"] = Field(
        "auto",
        description="Loss. auto: cross-entropy + soft Dice for segmentation, L1 for image-to-image and crappify, MSE on the masked patches for masking. ce: cross-entropy only; ce_dice adds soft Dice to cross-entropy.",
    )
    sampling: Literal["cover", "random"] = Field(
        "cover",
        description="Order of the training patches. cover: every image comes once per patch it spans (at least once) in a shuffled round before any comes again, so small data is covered without repeats within an epoch; random: images drawn independently, weighted by their area (repeats within a batch possible).",
    )
    ema: float = Field(
        0.99,
        ge=0.0,
        lt=1.0,
        description="Weight averaging: validation and the saved checkpoints use an exponential moving average of the weights with this decay (ramped up over the first steps; 0 = off, the raw weights).",
    )
    pick_threshold: bool = Field(
        True,
        description="Semantic segmentation: choose the background threshold that gives the best validation IoU (mean over the non-background classes, scored on the validation patches and on the validation images predicted whole as prediction predicts them) and store it in the checkpoint; prediction labels with it. With 2 classes it is the foreground probability from which a pixel is foreground; with more, a pixel takes its likeliest non-background class c where p_c / (p_0 + p_c) reaches it. Off (or without validation data, or an older checkpoint): argmax, i.e. 0.5.",
    )
    amp: Literal["auto", "off"] = Field(
        "auto",
        description="Mixed precision on a CUDA GPU: auto uses bfloat16 where the GPU supports it, else float16 with a gradient scaler; off keeps float32. The CPU always trains in float32.",
    )
    channels_last: bool = Field(
        True,
        description="CUDA GPU, 2D models: keep images and weights in channels-last memory order (faster convolutions).",
    )
    compile: bool = Field(
        False,
        description="CUDA GPU: compile the model with torch.compile (a slower first step, faster steps after). Refused on the CPU.",
    )
    resume: Path | None = Field(None, description="Resume training from this checkpoint (weights, optimizer, epoch).")
    tensorboard: bool = Field(
        True,
        description="Write TensorBoard logs (losses, metrics and learning rate per epoch) to results/<run>/tensorboard/ beside the CSV log and charts, when tensorboard is installed (the `tensorboard` extra; without it a note says so).",
    )


class PredictConfig(_Section):
    checkpoint: Path | None = Field(
        None, description="Checkpoint to predict with. Empty = the best checkpoint of this run."
    )
    tile_size: list[int] | None = Field(
        None,
        description="Largest tile fed to the model. Empty = the whole image up to 2048 per axis in 2D, 128 in 3D (at least the patch size).",
    )
    overlap: float = Field(
        0.0625, ge=0, lt=0.5, description="Tile overlap as a fraction of the tile; overlaps are blended smoothly."
    )
    batch_size: int = Field(
        4,
        ge=1,
        description="Tiles per forward pass (lowered automatically for big tiles: at most 4 M voxels per pass).",
    )
    tta: bool = Field(
        False, description="Test-time augmentation: average the predictions over flips and 90-degree rotations."
    )
    z_filter: int = Field(
        0, ge=0, description="3D only: median filter of this size along Z on the argmax labels (0 = off)."
    )
    yz_filter: int = Field(
        0, ge=0, description="3D only: median filter of this size over Y and Z on the argmax labels (0 = off)."
    )
    save_tiff: bool = Field(
        True, description="Also write TIFFs of the probabilities and labels (the zarr stores are always written)."
    )
    output_format: Literal["zarr", "ome-zarr"] = Field(
        "zarr",
        description="How the predicted arrays are stored. zarr: per_image/<image>.zarr (prediction, labels, image arrays); ome-zarr: one OME-Zarr image (NGFF 0.5 multiscales, axes with units and the physical scale) per output, per_image/<image>.ome.zarr (probabilities or image), per_image_binarized/<image>.ome.zarr (labels), per_image_post_processing/<image>.ome.zarr (filtered labels). TIFFs follow save_tiff either way.",
    )
    pixel_size: list[float] | None = Field(
        None,
        description="Physical size of a pixel per spatial axis ((Z,)Y,X, in micrometres) written into OME-Zarr outputs. Empty = the input's own: the napari layer's scale (Predict dock), OME-TIFF PhysicalSize or ImageJ resolution/spacing, an OME-Zarr input's scale; else 1 with no unit.",
    )
    full_image: bool = Field(
        False,
        description="Predict each image in one pass (no tiles) into full_image/ and full_image_binarized/ (post-processing: full_post_processing/), when its forward pass fits in memory; an image that does not fit is refused with the memory it needs. Tiled results go to per_image*/.",
    )
    stack_2d: bool = Field(
        False,
        description="Semantic segmentation, 2D: post-process the test images of a folder as one 3D stack (z_filter / yz_filter across images of one shape, in file-name order), as BiaPy's 'analyze 2D images as a 3D stack'.",
    )


class SelfSupervisedConfig(_Section):
    pretext: str = Field(
        "masking",
        description="Pretext task. masking (the default, as BiaPy's): a masked autoencoder (model mae, the default model then, with 64x64 patches in 2D when data.patch_size is not given) learns to fill in hidden patches; crappify: learn to restore images degraded by noise and down/up-sampling. A config that names no pretext but a model other than a masked autoencoder (or crappify's own settings) means crappify.",
    )
    noise: float = Field(
        0.2,
        ge=0,
        description="crappify: standard deviation of the added Gaussian noise, as a fraction of the image maximum (the result is clipped to [0, max]).",
    )
    degrade_at_prediction: bool = Field(
        True,
        description="crappify: degrade images before predicting them and report the PSNR of the degraded input and of the restoration against the original (as BiaPy's test). Turn off to restore images as they are.",
    )
    downsample_area: float = Field(
        4.0,
        ge=1,
        description="crappify: area factor of the bilinear down-sampling (4 = 2x per axis, Z included in 3D), followed by up-sampling back.",
    )
    cache_degraded: bool = Field(
        False,
        description="crappify: degrade each training and validation image once, as a whole, and train on these fixed copies (float32 TIFFs in results/<run>/crappified/<key>/train|val/, never beside your data) instead of fresh noise per patch; <key> hashes the noise, downsample_area, seed, normalization and the source names and sizes, so a later run of the experiment (a resume, a rerun) with the same settings copies them from the earlier run instead of degrading again.",
    )


class ClassificationConfig(_Section):
    fit: Literal["resize", "pad"] = Field(
        "resize",
        description="How an image whose size differs from data.patch_size is brought to it: resize (bilinear, all of the image seen, aspect ratio not kept) or pad (zero-pad a smaller image, crop a larger one: the centre at validation and prediction, a random crop in training; pixel size kept).",
    )
