"""The one typed config of a run: validated, saved as YAML beside the results, loadable to repeat the run.

Field descriptions are the user documentation: `docs/config.md` is generated from them (`config_reference()`).
sections.py holds the data/model/train/predict/... sections, augment.py the augment section, run.py `RunConfig`
(load, overrides, save) and reference.py the generated reference and the commented `init` template.
"""

from .augment import AugmentConfig
from .reference import commented_config, config_reference
from .run import RunConfig, apply_override
from .sections import (
    NAME_RULE,
    ClassificationConfig,
    DataConfig,
    ModelConfig,
    PredictConfig,
    SelfSupervisedConfig,
    TrainConfig,
    run_name_problem,
)

__all__ = [
    "NAME_RULE",
    "AugmentConfig",
    "ClassificationConfig",
    "DataConfig",
    "ModelConfig",
    "PredictConfig",
    "RunConfig",
    "SelfSupervisedConfig",
    "TrainConfig",
    "apply_override",
    "commented_config",
    "config_reference",
    "run_name_problem",
]
