"""The augment section of the run config: BiaPy's AUGMENTOR options with their bounds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .sections import _Section


class AugmentConfig(_Section):
    """Training augmentation (engine/data/augment.py), named after BiaPy's AUGMENTOR options: each transform has a
    probability per patch (`..._prob`, BiaPy's flag with DA_PROB) and its range fields. Geometric transforms move raw
    and label/target together (labels by nearest neighbour); intensity transforms change the raw only."""

    enable: bool = Field(True, description="Augment training patches (applied identically to raw and label).")
    samples: int = Field(
        0,
        ge=0,
        le=1000,
        description="Write this many augmented training patches to results/<run>/aug/ at the start of training (PNG, raw and label/target side by side; 3D: the middle slice), to see what the model is shown.",
    )
    flips: bool = Field(True, description="Random flips along every spatial axis. BiaPy: VFLIP, HFLIP, ZFLIP.")
    rotate90: bool = Field(
        True, description="Random 90-degree rotations in the Y-X plane (BiaPy: ROT90); square patches only."
    )
    intensity: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Strength of random brightness/contrast jitter of the raw (0 = off). Default: the workflow's (0 for image to image, whose raw-to-target intensities are what it learns; 0.1 for the others).",
    )
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
