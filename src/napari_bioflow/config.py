"""The one typed config of a run: validated, saved as YAML beside the results, loadable to repeat the run.

Field descriptions are the user documentation: `docs/config.md` is generated from them (`config_reference()`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
        description="Folder of test raw images predicted after training (or by `predict`). Classification: class sub-folders (then metrics are computed) or a flat folder (predictions only).",
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
    normalization: Literal["percentile", "meanstd", "none"] = Field(
        "percentile",
        description="percentile: scale each channel so its low/high percentiles of the training data map to 0/1; meanstd: subtract the training mean and divide by the standard deviation; none: use raw values. The statistics are stored in the checkpoint and reused at prediction.",
    )
    percentile_low: float = Field(1.0, ge=0, le=100, description="Low percentile for percentile normalization.")
    percentile_high: float = Field(99.8, ge=0, le=100, description="High percentile for percentile normalization.")
    foreground_sampling: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Probability that a training patch is centred on a foreground (non-background) pixel rather than drawn uniformly. Helps with sparse objects.",
    )


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
    learning_rate: float = Field(1e-3, gt=0, description="Initial (peak) learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (L2 for ADAM/SGD, decoupled for ADAMW).")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum for SGD.")
    scheduler: Literal["none", "reduce_on_plateau", "one_cycle", "warmup_cosine"] = Field(
        "none",
        description="Learning-rate schedule: none, reduce_on_plateau (halve on a validation-loss plateau), one_cycle, warmup_cosine (linear warm-up then cosine decay).",
    )
    warmup_epochs: int = Field(1, ge=0, description="Warm-up epochs for warmup_cosine.")
    loss: Literal["auto", "ce", "ce_dice", "l1", "mse"] = Field(
        "auto",
        description="Loss. auto: cross-entropy for segmentation, L1 for image-to-image and crappify, MSE on the masked patches for masking. ce_dice adds soft Dice to cross-entropy.",
    )
    resume: Path | None = Field(None, description="Resume training from this checkpoint (weights, optimizer, epoch).")


class AugmentConfig(_Section):
    """Training augmentation (engine/data/augment.py), named after BiaPy's AUGMENTOR options: each transform has a
    probability per patch (`..._prob`, BiaPy's flag with DA_PROB) and its range fields. Geometric transforms move raw
    and label/target together (labels by nearest neighbour); intensity transforms change the raw only."""

    enable: bool = Field(True, description="Augment training patches (applied identically to raw and label).")
    flips: bool = Field(True, description="Random flips along every spatial axis. BiaPy: VFLIP, HFLIP, ZFLIP.")
    rotate90: bool = Field(
        True, description="Random 90-degree rotations in the Y-X plane (BiaPy: ROT90); square patches only."
    )
    intensity: float = Field(0.1, ge=0, le=1, description="Strength of random brightness/contrast jitter (0 = off).")
    affine_mode: Literal["reflect", "constant", "edge"] = Field(
        "reflect",
        description="How rotation, zoom, shear, elastic deformation and misalignment fill what comes from outside the patch: reflect (mirror), constant (0; background for labels) or edge (repeat the border). BiaPy: AFFINE_MODE, E_MODE.",
    )
    random_rot_prob: float = Field(
        0.0, ge=0, le=1, description="Probability of a rotation by any angle in the Y-X plane (BiaPy: RANDOM_ROT)."
    )
    random_rot_range: tuple[float, float] = Field(
        (-180.0, 180.0), description="Range of the rotation angle in degrees (BiaPy: RANDOM_ROT_RANGE)."
    )
    zoom_prob: float = Field(
        0.0, ge=0, le=1, description="Probability of a zoom (scaling) in the Y-X plane (BiaPy: ZOOM)."
    )
    zoom_range: tuple[float, float] = Field(
        (0.8, 1.2),
        description="Range of the zoom factor: 1 = no change, 0.5 = zoomed out to half the size (BiaPy: ZOOM_RANGE).",
    )
    zoom_in_z: bool = Field(False, description="3D: zoom along Z too, by the same factor (BiaPy: ZOOM_IN_Z).")
    shear_prob: float = Field(
        0.0, ge=0, le=1, description="Probability of a shear in the Y-X plane, along X and Y (BiaPy: SHEAR)."
    )
    shear_range: tuple[float, float] = Field(
        (-20.0, 20.0), description="Range of the shear angles in degrees, drawn for X and for Y (BiaPy: SHEAR_RANGE)."
    )
    elastic_prob: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability of an elastic deformation in the Y-X plane, the same for every Z section (BiaPy: ELASTIC).",
    )
    e_alpha: tuple[float, float] = Field(
        (12.0, 16.0),
        description="Range of the strength of the elastic displacement field, as BiaPy's E_ALPHA: uniform noise in [-1, 1] smoothed by a Gaussian of sigma e_sigma, times alpha, in pixels (here drawn at low resolution and matched in RMS).",
    )
    e_sigma: float = Field(
        4.0,
        gt=0,
        description="Smoothness of the elastic displacement field in pixels (BiaPy: E_SIGMA); about alpha / 10 gives visible effects.",
    )
    g_blur_prob: float = Field(
        0.0, ge=0, le=1, description="Probability of a Gaussian blur of the raw in the Y-X plane (BiaPy: G_BLUR)."
    )
    g_sigma: tuple[float, float] = Field(
        (1.0, 2.0), description="Range of the Gaussian blur's sigma in pixels (BiaPy: G_SIGMA)."
    )
    median_blur_prob: float = Field(
        0.0, ge=0, le=1, description="Probability of a median filter of the raw in the Y-X plane (BiaPy: MEDIAN_BLUR)."
    )
    mb_kernel: tuple[int, int] = Field(
        (3, 7),
        description="Range of the median filter's size in pixels; an even size is taken as the next odd one (BiaPy: MB_KERNEL).",
    )
    gamma_contrast_prob: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability of a gamma change of the raw, v -> v ** gamma on the patch scaled to [0, 1] by its minimum and maximum (BiaPy: GAMMA_CONTRAST).",
    )
    gc_gamma: tuple[float, float] = Field(
        (1.25, 1.75), description="Range of the gamma exponent; above 1 darkens (BiaPy: GC_GAMMA)."
    )
    brightness_prob: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability of a brightness change of the raw: a value added to the normalized patch (BiaPy: BRIGHTNESS).",
    )
    brightness_factor: tuple[float, float] = Field(
        (-0.1, 0.1), description="Range of the value added, in normalized units (BiaPy: BRIGHTNESS_FACTOR)."
    )
    contrast_prob: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability of a contrast change of the raw: the normalized patch times 1 + factor (BiaPy: CONTRAST).",
    )
    contrast_factor: tuple[float, float] = Field(
        (-0.1, 0.1), description="Range of the contrast factor (BiaPy: CONTRAST_FACTOR)."
    )
    gaussian_noise_prob: float = Field(
        0.0, ge=0, le=1, description="Probability of additive Gaussian noise on the raw (BiaPy: GAUSSIAN_NOISE)."
    )
    gaussian_noise_mean: float = Field(
        0.0, description="Mean of the Gaussian noise, in normalized units (BiaPy: GAUSSIAN_NOISE_MEAN)."
    )
    gaussian_noise_var: float = Field(
        0.05, ge=0, description="Variance of the Gaussian noise, in normalized units (BiaPy: GAUSSIAN_NOISE_VAR)."
    )
    poisson_noise_prob: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability of Poisson (shot) noise on the raw: the patch scaled to [0, peak] photons, drawn, scaled back (BiaPy: POISSON_NOISE).",
    )
    poisson_noise_peak: tuple[float, float] = Field(
        (10.0, 100.0), description="Range of the photon count of the patch's brightest value; lower is noisier."
    )
    dropout_prob: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability of setting a random fraction of the raw's pixels to 0 (BiaPy: DROPOUT).",
    )
    drop_range: tuple[float, float] = Field(
        (0.0, 0.2), description="Range of the fraction of pixels dropped (BiaPy: DROP_RANGE)."
    )
    cutout_prob: float = Field(
        0.0, ge=0, le=1, description="Probability of filling random boxes of the raw with cout_cval (BiaPy: CUTOUT)."
    )
    cout_nb_iterations: tuple[int, int] = Field(
        (1, 3), description="Range of the number of boxes (BiaPy: COUT_NB_ITERATIONS)."
    )
    cout_size: tuple[float, float] = Field(
        (0.05, 0.3), description="Range of a box's size as a fraction of each axis of the patch (BiaPy: COUT_SIZE)."
    )
    cout_cval: float = Field(
        0.0, description="Value the boxes are filled with, in normalized units (BiaPy: COUT_CVAL)."
    )
    cout_apply_to_mask: bool = Field(
        False,
        description="Cut the same boxes out of the label (to background 0) or the target image (to cout_cval) (BiaPy: COUT_APPLY_TO_MASK).",
    )
    misalignment_prob: float = Field(
        0.0,
        ge=0,
        le=1,
        description="3D only: probability of misaligned sections, raw and label together: from a random Z section on (or that section alone), the sections are shifted or rotated in Y-X (BiaPy: MISALIGNMENT).",
    )
    ms_displacement: int = Field(
        16,
        ge=0,
        description="3D: largest misalignment in pixels, of the shift or of the corners of a rotated section (BiaPy: MS_DISPLACEMENT).",
    )
    ms_rotate_ratio: float = Field(
        0.5,
        ge=0,
        le=1,
        description="3D: fraction of the misalignments that are rotations rather than shifts (BiaPy: MS_ROTATE_RATIO).",
    )
    missing_sections_prob: float = Field(
        0.0,
        ge=0,
        le=1,
        description="3D only: probability that a patch gets damaged sections: in some Z sections of the raw a thick random line is filled with the section's mean (BiaPy: MISSING_SECTIONS).",
    )
    missp_section_prob: float = Field(
        0.5,
        ge=0,
        le=1,
        description="3D: probability of each Z section of such a patch to be damaged (BiaPy: MISSP_CHANNEL_PB).",
    )
    missp_iterations: tuple[int, int] = Field(
        (10, 30),
        description="3D: range of the damaged line's half-width in pixels (BiaPy: MISSP_ITERATIONS, dilation iterations).",
    )

    @field_validator(
        "random_rot_range",
        "zoom_range",
        "shear_range",
        "e_alpha",
        "g_sigma",
        "mb_kernel",
        "gc_gamma",
        "brightness_factor",
        "contrast_factor",
        "poisson_noise_peak",
        "drop_range",
        "cout_nb_iterations",
        "cout_size",
        "missp_iterations",
    )
    @classmethod
    def _range(cls, v, info):
        lo, hi = v
        low, high = _AUGMENT_BOUNDS.get(info.field_name, (None, None))
        if lo > hi:
            raise ValueError(f"{[lo, hi]} must be [low, high] with low <= high")
        if info.field_name in _POSITIVE and lo <= 0:
            raise ValueError(f"{[lo, hi]} must lie above 0")
        if (low is not None and lo < low) or (high is not None and hi > high):
            raise ValueError(f"{[lo, hi]} must lie within [{low}, {high if high is not None else 'inf'}]")
        return v

    def problem(self, ndim: int) -> str | None:
        """Why these settings do not fit `ndim`-D patches, else None."""
        only_3d = [f"augment.{n}" for n in ("misalignment_prob", "missing_sections_prob") if getattr(self, n) > 0]
        if ndim == 2 and only_3d:
            return (
                f"{' and '.join(only_3d)} apply to 3D volumes only (sections along Z); set "
                f"{'them' if len(only_3d) > 1 else 'it'} to 0 for 2D images"
            )
        return None


# bounds of AugmentConfig's range fields (lowest, highest; None = none); _POSITIVE ones must also stay above 0
_AUGMENT_BOUNDS = {
    "random_rot_range": (-360, 360),
    "shear_range": (-89, 89),
    "e_alpha": (0, None),
    "g_sigma": (0, None),
    "mb_kernel": (1, 99),
    "contrast_factor": (-1, None),
    "drop_range": (0, 1),
    "cout_nb_iterations": (0, 100),
    "cout_size": (0, 1),
    "missp_iterations": (0, None),
    "zoom_range": (0, None),
    "gc_gamma": (0, None),
    "poisson_noise_peak": (0, None),
}
_POSITIVE = {"zoom_range", "gc_gamma", "poisson_noise_peak"}


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


class SelfSupervisedConfig(_Section):
    pretext: str = Field(
        "crappify",
        description="Pretext task. crappify: learn to restore images degraded by noise and down/up-sampling; masking: a masked autoencoder (model mae) learns to fill in hidden patches.",
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


class ClassificationConfig(_Section):
    fit: Literal["resize", "pad"] = Field(
        "resize",
        description="How an image whose size differs from data.patch_size is brought to it: resize (bilinear, all of the image seen, aspect ratio not kept) or pad (zero-pad a smaller image, crop a larger one: the centre at validation and prediction, a random crop in training; pixel size kept).",
    )


class RunConfig(_Section):
    workflow: str = Field(
        "semantic_segmentation",
        description="The workflow: semantic_segmentation, image_to_image, self_supervised or classification. Classification reads data.train_raw (and val_raw, test_raw) as folders with one sub-folder per class, named after the class.",
    )
    name: str = Field("my_experiment", description=f"Experiment name: the folder under output_dir ({NAME_RULE}).")
    output_dir: Path = Field(Path("bioflow_runs"), description="Where experiment folders are created.")
    ndim: Literal[2, 3] = Field(2, description="2 for Y,X images, 3 for Z,Y,X volumes.")
    n_classes: int = Field(
        2,
        ge=2,
        description="Number of classes including background (2 = foreground/background). Classification: set from the class sub-folders of data.train_raw.",
    )
    class_names: list[str] = Field(
        default_factory=list,
        description="Optional class names, in label order. Classification: the class sub-folder names (sorted), or this order when given.",
    )
    seed: int = Field(0, description="Random seed (patch sampling, augmentation, initialisation).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto uses a CUDA GPU when present.")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    self_supervised: SelfSupervisedConfig = Field(default_factory=SelfSupervisedConfig)
    classification: ClassificationConfig = Field(default_factory=ClassificationConfig)

    @field_validator("name")
    @classmethod
    def _path_safe_name(cls, v):
        problem = run_name_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("class_names")
    @classmethod
    def _unique_names(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("class names must be unique")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if len(self.data.patch_size) != self.ndim:
            raise ValueError(
                f"data.patch_size {self.data.patch_size} has {len(self.data.patch_size)} axes but ndim is {self.ndim}"
            )
        if any(p < 1 for p in self.data.patch_size):
            raise ValueError(f"data.patch_size {self.data.patch_size} must be positive")
        if self.predict.tile_size is not None and len(self.predict.tile_size) != self.ndim:
            raise ValueError(
                f"predict.tile_size {self.predict.tile_size} has {len(self.predict.tile_size)} axes but ndim is {self.ndim}"
            )
        if self.augment.problem(self.ndim):
            raise ValueError(self.augment.problem(self.ndim))
        from .engine.workflows import get_workflow

        try:
            workflow = get_workflow(self)  # the registered workflows (and self-supervised pretexts)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
        workflow.check_config(self)
        if self.class_names and len(self.class_names) != self.n_classes:
            raise ValueError(f"{len(self.class_names)} class names given for {self.n_classes} classes")
        return self

    # --- names and YAML --------------------------------------------------------------------------
    def class_label(self, i: int) -> str:
        return self.class_names[i] if self.class_names else ("background" if i == 0 else f"class_{i}")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: Path) -> Path:
        """Write atomically; a full disk is one sentence naming the folder (engine/storage.py)."""
        import os

        from .engine.storage import discard, writing

        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        with writing(path.parent, path.name):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                tmp.write_text(self.to_yaml())
                os.replace(tmp, path)
            except BaseException:
                discard(tmp)
                raise
        return path

    @classmethod
    def load(cls, path: Path, overrides: list[str] | None = None) -> RunConfig:
        from .engine.errors import InputError

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise InputError(f"Config file {path} cannot be read: {e.strerror or e}.") from None
        except yaml.YAMLError as e:
            raise InputError(f"Config file {path} is not valid YAML: {str(e).splitlines()[0]}.") from None
        if not isinstance(data, dict):
            raise InputError(f"Config file {path} must hold a mapping of fields, not {type(data).__name__}.")
        return cls.from_dict(data, overrides, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, overrides: list[str] | None = None, source: str = "config") -> RunConfig:
        from .engine.errors import InputError

        data = dict(data)
        for item in overrides or []:
            apply_override(data, item)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "config"
            msg = err["msg"].removeprefix("Value error, ")
            given = [o for o in overrides or [] if o.split("=", 1)[0].strip() == where]  # the last one won
            origin = f" (from --set {given[-1]})" if given else ""
            raise InputError(f"{source}: field '{where}'{origin}: {msg}.") from None


def apply_override(data: dict, item: str) -> None:
    """Apply one `section.field=value` override (value parsed as YAML) to a nested dict in place."""
    from .engine.errors import InputError

    if "=" not in item:
        raise InputError(f"Override '{item}' must look like section.field=value.")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise InputError(f"Override '{item}': '{p}' is not a section.")
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise InputError(f"Override '{item}': the value is not valid YAML.") from None


def _type_name(annotation) -> str:
    s = str(annotation).replace("typing.", "").replace("pathlib.", "").replace("NoneType", "None")
    return s.replace("<class '", "").replace("'>", "")


def config_reference() -> str:
    """Markdown reference of every config field, generated from the model (kept current by a test)."""
    lines = [
        "# Config reference",
        "",
        "Generated from `napari_bioflow.config.RunConfig` by `napari-bioflow docs`; do not edit by hand.",
        "Every field can be set in the YAML file or overridden on the command line with `--set section.field=value`.",
        "",
    ]

    def section(model: type[BaseModel], prefix: str):
        rows, subs = [], []
        for fname, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                subs.append((ann, f"{prefix}{fname}."))
                continue
            default = f.get_default(call_default_factory=True)
            rows.append(
                f"| `{prefix}{fname}` | `{_type_name(ann)}` | {f'`{default}`' if default is not None else 'empty'} | {f.description or ''} |"
            )
        lines.extend(
            [
                f"## `{prefix.rstrip('.') or 'top level'}`",
                "",
                "| field | type | default | meaning |",
                "|---|---|---|---|",
                *rows,
                "",
            ]
        )
        for sub, p in subs:
            section(sub, p)

    section(RunConfig, "")
    return "\n".join(lines)


def commented_config(workflow: str, ndim: int = 2, values: dict | None = None, notes: tuple[str, ...] = ()) -> str:
    """A starting YAML config for `workflow`, every field with its description as a comment. `values` (nested
    sections) replace the starting values; `notes` are comment lines added below the header."""
    import textwrap

    from .engine.workflows import get_workflow

    needs_target = get_workflow(workflow).needs_target
    start = RunConfig(
        workflow=workflow,
        ndim=ndim,
        name=f"my_{workflow}_{ndim}d",
        data=DataConfig(
            patch_size=[32, 128, 128] if ndim == 3 else [256, 256],
            train_raw=Path("path/to/train/raw"),
            train_label=Path("path/to/train/label") if needs_target else None,
        ),
    )
    start = start.model_dump(mode="json")
    for section, fields in (values or {}).items():
        if isinstance(fields, dict) and isinstance(start.get(section), dict):
            start[section].update(fields)
        else:
            start[section] = fields
    values = RunConfig.model_validate(start).model_dump(mode="json")
    out = [
        f"# napari-bioflow config: {workflow.replace('_', ' ')}, {ndim}D.",
        "# Run: napari-bioflow train THIS.yaml   (override any field: --set train.epochs=5)",
        *(f"# {line}" for line in notes),
        "",
    ]

    def emit(model: type[BaseModel], data: dict, indent: str):
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                out.append(f"{indent}{name}:")
                emit(ann, data[name], indent + "  ")
                continue
            for line in textwrap.wrap(f.description or "", 100 - len(indent)):
                out.append(f"{indent}# {line}")
            dumped = yaml.safe_dump({name: data[name]}, default_flow_style=True, sort_keys=False).strip()
            out.append(f"{indent}{dumped[1:-1] if dumped.startswith('{') else dumped}")

    emit(RunConfig, values, "")
    return "\n".join(out) + "\n"
