"""What the Train dock's fields offer, asked of the workflow declarations and the model registry (no Qt here):
the workflow and variant choices, each workflow's own fields, model options, and the augmentation fields shown."""

from __future__ import annotations

from ..engine.errors import InputError

# the Advanced section shows each augmentation's probability (augment.<name>_prob); the ranges stay in the YAML
_AUGMENT_PROBABILITIES = (
    ("random_rot", "rotation"),
    ("zoom", "zoom"),
    ("shear", "shear"),
    ("elastic", "elastic"),
    ("gamma_contrast", "gamma"),
    ("brightness", "brightness"),
    ("contrast", "contrast"),
    ("g_blur", "Gaussian blur"),
    ("median_blur", "median blur"),
    ("gaussian_noise", "Gaussian noise"),
    ("poisson_noise", "Poisson noise"),
    ("dropout", "dropout"),
    ("cutout", "cutout"),
    ("misalignment", "misaligned sections"),
    ("missing_sections", "damaged sections"),
)
_AUGMENT_3D_ONLY = ("misalignment", "missing_sections")


def workflow_choices() -> list[tuple[str, str]]:
    """(title, config name) of every registered workflow, in their order."""
    from ..engine.workflows.base import workflow_classes

    return list(dict.fromkeys((c.title, c.name) for c in workflow_classes()))


def variant_choices() -> dict[str, list[tuple[str, str]]]:
    """Config field -> (title, value) of the variants it chooses (e.g. self_supervised.pretext)."""
    from ..engine.workflows.base import workflow_classes

    out: dict[str, list[tuple[str, str]]] = {}
    for c in workflow_classes():
        if c.variant:
            # the short value as the choice: a long title widened the dock past a 1366 px screen (the field's tooltip, the
            # config description, says what each does)
            out.setdefault(c.variant[0], []).append((c.variant[1], c.variant[1]))
    return out


def section_options() -> list[str]:
    """Every config field a workflow shows of its own section in the Train dock."""
    from ..engine.workflows.base import workflow_classes

    return list(dict.fromkeys(p for c in workflow_classes() for p in c.section_options))


def model_options_of(name: str) -> dict:
    """The options (with defaults) of a registered model; empty for an unknown name."""
    from ..engine.models import model_info

    try:
        return model_info(name)
    except KeyError:
        return {}


def parse_options(text: str) -> dict:
    """'embed_dim: 64, depth: 2' -> {'embed_dim': 64, 'depth': 2}; raises InputError on anything else."""
    import yaml

    text = text.strip()
    if not text:
        return {}
    try:
        value = yaml.safe_load(text if text.startswith("{") else "{" + text + "}")
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise InputError(f"Model options must look like 'name: value, name: value', not '{text}'.")
    return value


def _floor16(n: int, cap: int) -> int:
    return min(cap, n // 16 * 16) if n >= 16 else n


def fit_patch(shapes: list[tuple[int, ...]], ndim: int, hold_strip: bool) -> tuple[int, int, float | None]:
    """(patch Z, patch Y and X, validation fraction or None) that fit images of the given spatial shapes: the patch
    fits every image and, when a strip of the only image is held aside for validation (`hold_strip`), both the
    strip and the rest hold a patch. The fraction then says how much the strip takes (the engine holds aside at
    least one patch of rows); None: leave the fraction as it is."""
    cap = 256 if ndim == 2 else 128
    height, width = min(s[-2] for s in shapes), min(s[-1] for s in shapes)
    patch = _floor16(min(height // 3 if hold_strip else height, width), cap)
    if hold_strip and patch < 64:  # a small image: the strip may take up to half of it
        patch = _floor16(min(height // 2, width), cap)
    patch = max(8, patch)
    depth = _floor16(min(s[0] for s in shapes), 32) if ndim == 3 else 0
    fraction = max(0.05, int(patch / height / 0.05) * 0.05) if hold_strip else None
    return depth, patch, None if fraction is None else round(fraction, 2)
