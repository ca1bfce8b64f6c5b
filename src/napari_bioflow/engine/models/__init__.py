"""Model zoo: ``create_model(name, ndim=..., in_channels=..., out_channels=..., **options)``.

Importing this package registers the built-in models; a new architecture is a new module here whose
builder is decorated with ``@register_model`` and which is imported below.
"""

from . import (
    classifiers,  # noqa: F401  (registers vit, simple_cnn)
    dfcan,  # noqa: F401  (registers dfcan)
    edsr,  # noqa: F401  (registers edsr)
    efficientnet,  # noqa: F401  (registers efficientnet_b0 ... efficientnet_b7)
    mae,  # noqa: F401  (registers mae, mae_vit_base)
    multiresunet,  # noqa: F401  (registers multiresunet)
    rcan,  # noqa: F401  (registers rcan)
    resunet_pp,  # noqa: F401  (registers resunet++)
    se_unet,  # noqa: F401  (registers seunet, resunet_se)
    unet,  # noqa: F401  (registers unet, resunet, attention_unet)
    unetr,  # noqa: F401  (registers unetr, unetr_mini, unetr_small, unetr_base, unetr_vit_base)
    unext,  # noqa: F401  (registers unext_v1)
    wdsr,  # noqa: F401  (registers wdsr)
)
from .registry import UnknownModelError, create_model, list_models, model_info, model_tags, model_task, register_model

__all__ = [
    "UnknownModelError",
    "create_model",
    "list_models",
    "model_info",
    "model_tags",
    "model_task",
    "register_model",
]
