"""Classification: one class per image (2D or 3D) from folders of class sub-folders or layers given a class.

Plugs into the shared trainer through the data hooks (whole images brought to the patch size, not patches);
prediction is one probability vector per image (engine/predict/classification_results.py), not a sliding window."""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from .base import Workflow, register_workflow


@register_workflow
class Classification(Workflow):
    name = "classification"
    order = 3
    title = "classification"
    trains_from = "classes"
    losses = ("auto", "ce")
    default_model = "vit"
    model_tasks = ("classification",)
    excluded_model_tags = ()
    section_options = ("classification.fit",)
    metric_keys = ("accuracy",)
    chart_metric = "accuracy"
    chart_title = "validation accuracy"
    dense = False  # one prediction per image: the CLI, widgets and batch mode use classification_results
    # a tenth of the dense workflows' rate: at 1e-3 the classifiers stall near chance on both classification sets of
    # benchmarks/bench_quality.py (issue 14, 8 seeds: 0.78 and 0.75 accuracy at 300 steps against 0.56 and 0.72)
    config_defaults = {**Workflow.config_defaults, "train.learning_rate": 1e-4}
    init_notes = (
        "Classification: data.train_raw holds one sub-folder per class (the sub-folder names are the class names);",
        "data.val_raw (optional) and data.test_raw the same, or a flat test folder for predictions only.",
        "Images are brought to data.patch_size by classification.fit: resize or pad (crop when larger).",
        "Models: vit (default, 2D and 3D), simple_cnn (2D and 3D), efficientnet_b0 ... efficientnet_b7 (2D).",
        "Results: predictions.csv; with test classes metrics.csv and confusion_matrix.csv/.png.",
    )

    @classmethod
    def init_values(cls, ndim: int) -> dict:
        return {
            "name": f"my_classification_{ndim}d",
            "model": {"name": "vit"},
            "data": {
                "train_raw": "path/to/train",
                "patch_size": [16, 32, 32] if ndim == 3 else [64, 64],
                "val_split": 0.2,
            },
            "train": {"batch_size": 16},
        }

    def build_dataset(self, cfg, train=None, val=None):
        from ..data.classification_data import build_class_dataset
        from ..models import model_task

        try:
            task = model_task(cfg.model.name)
        except KeyError as e:
            raise InputError(f"model: {e}") from None
        if task != "classification":
            raise InputError(
                f"Model '{cfg.model.name}' is not a classifier; for classification use vit, simple_cnn "
                f"or efficientnet_b0 ... efficientnet_b7 (model.name)."
            )
        return build_class_dataset(cfg, train, val)

    def training_data(self, dataset, cfg, normalizer):
        from ..data.classification_data import ImageData

        return ImageData(dataset, cfg, normalizer)

    def augment(self, x, y, cfg, generator):
        from ..data.augment import augment

        return augment(x, None, cfg.augment, generator)[0], y  # the class is not spatial

    def out_channels(self, cfg) -> int:
        return cfg.n_classes

    def model_defaults(self, cfg) -> dict[str, Any]:
        return {"img_size": list(cfg.data.patch_size)} if cfg.model.name == "vit" else {}

    def loss(self, cfg):
        import torch

        return torch.nn.CrossEntropyLoss()

    def activation(self, logits):
        import torch

        return torch.softmax(logits.float(), dim=1)

    rows_column = "file"  # as predict and the docks name them

    def write_set_metrics(self, run_dir, rows, cfg):
        """Accuracy, precision, recall, F1 and the confusion matrix over the set (when the files have classes)."""
        from ..predict.classification_results import write_batch_metrics

        return write_batch_metrics(run_dir, rows, cfg.class_names)

    def predict_file(self, loaded, image, name, run_dir, stem, device, target=None) -> dict:
        """Batch mode: one image's predictions.csv row (class, confidence, a probability per class, and the true
        class when the input sits in a class sub-folder; `target` is then its class index)."""
        from ..predict.classification_results import classify_batch, prediction_row

        probs = classify_batch(loaded, [image], device)[0]
        return {"prediction": prediction_row(probs, loaded.config.class_names, target), "metrics": {}}

    def metrics(self, cfg):
        from ..predict.classification_results import ClassificationMetrics

        return ClassificationMetrics(cfg.n_classes)
