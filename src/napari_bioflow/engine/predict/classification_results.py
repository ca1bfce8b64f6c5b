"""Classification metrics and prediction: class probabilities per image, predictions.csv, and with known classes
accuracy, precision, recall, F1 (macro and per class) and the confusion matrix (CSV and PNG)."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import Cancelled


class ClassificationMetrics:
    """Accumulates a confusion matrix (rows: true class, columns: predicted) from probabilities and classes."""

    def __init__(self, n_classes: int):
        self.n = n_classes
        self.confusion = np.zeros((n_classes, n_classes), dtype=np.int64)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        pred = np.asarray(prediction).reshape(len(prediction), -1).argmax(1)
        np.add.at(self.confusion, (np.asarray(target).reshape(-1).astype(np.int64), pred), 1)

    def per_class(self) -> dict[str, np.ndarray]:
        cm = self.confusion.astype(np.float64)
        tp = np.diag(cm)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)  # no prediction of a class: 0, as sklearn
            recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        return {"precision": precision, "recall": recall, "f1": f1, "support": cm.sum(1)}

    def compute(self) -> dict[str, float]:
        total = self.confusion.sum()
        pc = self.per_class()
        present = pc["support"] > 0  # macro averages over the classes that occur in the ground truth
        return {
            "accuracy": float(np.trace(self.confusion) / total) if total else float("nan"),
            "precision_macro": float(pc["precision"][present].mean()) if present.any() else float("nan"),
            "recall_macro": float(pc["recall"][present].mean()) if present.any() else float("nan"),
            "f1_macro": float(pc["f1"][present].mean()) if present.any() else float("nan"),
        }

    def write(self, out_dir: Path, class_names: Sequence[str]) -> dict[str, Path]:
        """metrics.csv (overall and per class), confusion_matrix.csv and confusion_matrix.png in `out_dir`."""
        out_dir.mkdir(parents=True, exist_ok=True)
        pc, overall = self.per_class(), self.compute()
        paths = {
            "metrics": out_dir / "metrics.csv",
            "confusion_csv": out_dir / "confusion_matrix.csv",
            "confusion_png": out_dir / "confusion_matrix.png",
        }
        with open(paths["metrics"], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["class", "precision", "recall", "f1", "support"])
            for i, name in enumerate(class_names):
                w.writerow(
                    [
                        name,
                        f"{pc['precision'][i]:.6f}",
                        f"{pc['recall'][i]:.6f}",
                        f"{pc['f1'][i]:.6f}",
                        int(pc["support"][i]),
                    ]
                )
            w.writerow(
                [
                    "macro",
                    f"{overall['precision_macro']:.6f}",
                    f"{overall['recall_macro']:.6f}",
                    f"{overall['f1_macro']:.6f}",
                    int(self.confusion.sum()),
                ]
            )
            w.writerow(["accuracy", "", "", f"{overall['accuracy']:.6f}", int(self.confusion.sum())])
        with open(paths["confusion_csv"], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["true \\ predicted", *class_names])
            for name, row in zip(class_names, self.confusion):
                w.writerow([name, *row.tolist()])
        plot_confusion(self.confusion, class_names, paths["confusion_png"])
        return paths

    def text(self, class_names: Sequence[str]) -> str:
        """The confusion matrix, precision, recall and F1 of every class, and the overall values as aligned text
        (printed by the CLI)."""
        width = max(8, *(len(n) for n in class_names)) + 1
        lines = ["true \\ predicted".ljust(width) + "".join(n[: width - 1].rjust(width) for n in class_names)]
        lines += [
            n.ljust(width) + "".join(str(v).rjust(width) for v in row) for n, row in zip(class_names, self.confusion)
        ]
        lines.append("")
        lines.append("class".ljust(width) + "".join(h.rjust(10) for h in ("precision", "recall", "f1", "support")))
        for name, p, r, f, n in self.per_class_rows(class_names):
            lines.append(name.ljust(width) + f"{p:10.4f}{r:10.4f}{f:10.4f}{n:10d}")
        m = self.compute()
        lines.append(
            "macro".ljust(width) + f"{m['precision_macro']:10.4f}{m['recall_macro']:10.4f}{m['f1_macro']:10.4f}"
            f"{int(self.confusion.sum()):10d}"
        )
        lines.append(" ".join(f"{k}={v:.4f}" for k, v in m.items()))
        return "\n".join(lines)

    def per_class_rows(self, class_names: Sequence[str]) -> list[tuple[str, float, float, float, int]]:
        """(class, precision, recall, F1, support) of every class."""
        pc = self.per_class()
        return [
            (name, float(pc["precision"][i]), float(pc["recall"][i]), float(pc["f1"][i]), int(pc["support"][i]))
            for i, name in enumerate(class_names)
        ]


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    n = len(class_names)
    fig = Figure(figsize=(1.2 + 0.6 * n, 1.0 + 0.6 * n), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(confusion, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(confusion[i, j]),
                ha="center",
                va="center",
                color="white" if confusion[i, j] > confusion.max() / 2 else "black",
            )
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    tmp = Path(path).with_suffix(".part.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return Path(path)


# --- prediction ---------------------------------------------------------------------------------------------
@dataclass
class ClassPrediction:
    name: str
    probabilities: np.ndarray  # (n_classes,)
    predicted: int
    true: int | None = None

    def label(self, class_names: Sequence[str]) -> str:
        return class_names[self.predicted]


def classify_batch(loaded, images: Sequence[np.ndarray], device: str = "cpu") -> np.ndarray:
    """Channel-last images ((Z,)Y,X,C, checked) -> class probabilities (N, n_classes), TTA as the config says."""
    import torch

    from ..data.classification_data import fit_to_patch, read_image
    from .tta import tta_predict

    cfg, model = loaded.config, loaded.model

    def probabilities(v):
        return torch.softmax(model(v).float(), dim=1)

    x = np.stack(
        [fit_to_patch(loaded.normalizer(read_image(im)), cfg.data.patch_size, cfg.classification.fit) for im in images]
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            t = torch.from_numpy(x).to(device)
            # TTA: the mean over the flips (Z too in 3D) and turns of the image, as for dense predictions
            probs = tta_predict(probabilities, t, dense=False) if cfg.predict.tta else probabilities(t)
    finally:
        model.train(was_training)
    return probs.cpu().numpy()


def classify_array(loaded, image, device: str = "cpu", name: str = "image") -> np.ndarray:
    """Probabilities of one image in any layout `to_channels_last` accepts (a layer's data)."""
    from ..data.sources import check_finite, to_channels_last

    cfg = loaded.config
    arr = to_channels_last(image, cfg.ndim, cfg.data.in_channels, name, f"the model ({loaded.path or 'just trained'})")
    check_finite(arr, name)
    return classify_batch(loaded, [arr], device)[0]


def class_test_items(folder: Path, class_names: Sequence[str], role: str = "test") -> list[tuple[Path, int | None]]:
    """(file, true class index or None) of a test folder: class sub-folders (known classes) or any layout without
    classes (engine/data/classification_data.py: items_of_test_folder)."""
    from ..data.classification_data import items_of_test_folder

    return items_of_test_folder(folder, class_names, role)


def check_test_items(loaded, items, source: str = "") -> None:
    """Open and check every test image (the set's 2D/3D as a whole, then each file) before anything is written."""
    from ..data.classification_data import open_set

    open_set(
        [path for path, _ in items], loaded.config, "test", source or f"the model ({loaded.path or 'just trained'})"
    )


def item_names(items: Sequence[tuple[Path, int | None]]) -> list[str]:
    """predictions.csv names: the file name in a flat folder, the path inside the folder (class/file) when the
    images sit in class sub-folders (where file names may repeat), as batch mode names them."""
    names = [f"{Path(p).parent.name}/{Path(p).name}" if true is not None else Path(p).name for p, true in items]
    if len(set(names)) < len(names):  # images without classes from nested folders: their path below the common one
        import os

        root = Path(os.path.commonpath([str(Path(p).parent) for p, _ in items]))
        names = [Path(p).relative_to(root).as_posix() for p, _ in items]
    return names


def predict_class_files(
    loaded,
    items: list[tuple[Path, int | None]],
    out_dir: Path,
    device: str = "cpu",
    cancel: Callable[[], bool] | None = None,
    batch_size: int | None = None,
    names: Sequence[str] | None = None,
) -> Iterator[ClassPrediction]:
    """Predict (file, true class or None) items, yielding each; then write predictions.csv in `out_dir` and, when
    every true class is known, metrics.csv and the confusion matrix. Use `finish_predictions` for the summary."""
    from ..data.classification_data import open_checked

    bs = batch_size or loaded.config.predict.batch_size
    for k in range(0, len(items), bs):
        if cancel is not None and cancel():
            raise Cancelled("prediction cancelled")
        part = items[k : k + bs]
        probs = classify_batch(loaded, [open_checked(p, loaded.config, "test") for p, _ in part], device)
        for j, ((path, true), pr) in enumerate(zip(part, probs)):
            yield ClassPrediction((names[k + j] if names else Path(path).name), pr, int(pr.argmax()), true)


def prediction_row(probs: np.ndarray, class_names: Sequence[str], true: int | None = None) -> dict:
    """One image's row of predictions.csv (after its file column)."""
    k = int(np.argmax(probs))
    row = {
        "class": class_names[k],
        "confidence": f"{probs[k]:.6f}",
        **{f"p_{n}": f"{p:.6f}" for n, p in zip(class_names, probs)},
    }
    if true is not None:
        row["true_class"] = class_names[true]
    return row


def rows_metrics(rows: Sequence[dict], class_names: Sequence[str]) -> ClassificationMetrics | None:
    """The metrics of batch rows (prediction_row, or predictions.csv read back) when every row has its true class."""
    if not rows or any(not r.get("true_class") for r in rows):
        return None
    m = ClassificationMetrics(len(class_names))
    index = {n: i for i, n in enumerate(class_names)}
    m.update(
        np.eye(len(class_names))[[index[r["class"]] for r in rows]], np.array([index[r["true_class"]] for r in rows])
    )
    return m


def write_batch_metrics(out_dir: Path, rows: Sequence[dict], class_names: Sequence[str]) -> Path | None:
    """metrics.csv and the confusion matrix of batch rows (prediction_row) when every row has its true class."""
    m = rows_metrics(rows, class_names)
    return None if m is None else m.write(out_dir, class_names)["metrics"]


def predictions_text(predictions_csv: Path, class_names: Sequence[str]) -> str:
    """The metrics text (confusion matrix, per class and overall values) of a predictions.csv with true classes,
    else ''."""
    with open(predictions_csv, newline="") as f:
        m = rows_metrics(list(csv.DictReader(f)), class_names)
    return "" if m is None else m.text(class_names)


def write_predictions(results: Sequence[ClassPrediction], class_names: Sequence[str], out_dir: Path) -> dict:
    """predictions.csv (file, predicted class, confidence, a probability per class, true class when known) and,
    when every true class is known, the metrics files. Returns {'predictions': path, 'metrics': {...} or {}}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "predictions.csv"
    known = bool(results) and all(r.true is not None for r in results)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["file", "class", "confidence", *[f"p_{n}" for n in class_names], *(["true_class"] if known else [])]
        )
        for r in results:
            w.writerow(
                [
                    r.name,
                    class_names[r.predicted],
                    f"{r.probabilities[r.predicted]:.6f}",
                    *[f"{p:.6f}" for p in r.probabilities],
                    *([class_names[r.true]] if known else []),
                ]
            )
    tmp.replace(path)
    out = {"predictions": path, "metrics": {}, "files": {}}
    if known:
        m = ClassificationMetrics(len(class_names))
        m.update(np.stack([r.probabilities for r in results]), np.array([r.true for r in results]))
        out.update(
            metrics=m.compute(),
            files=m.write(out_dir, class_names),
            confusion=m.confusion,
            per_class=m.per_class_rows(class_names),
            text=m.text(class_names),
        )
    return out


def run_class_prediction(
    loaded, items, out_dir: Path, device: str = "cpu", cancel=None, report: Callable | None = None
) -> dict:
    """predict_class_files + write_predictions; `report(i, n, prediction)` after each image."""
    start, results = time.perf_counter(), []
    names = loaded.config.class_names or [loaded.config.class_label(i) for i in range(loaded.config.n_classes)]
    for r in predict_class_files(loaded, items, out_dir, device, cancel, names=item_names(items)):
        results.append(r)
        if report is not None:
            report(len(results), len(items), r)
    out = write_predictions(results, names, out_dir)
    out.update(results=results, seconds=time.perf_counter() - start)
    return out
