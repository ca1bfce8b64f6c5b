"""Training charts as PNG files (matplotlib without a screen)."""

from __future__ import annotations

from pathlib import Path


def plot_history(rows: list[dict], path: Path, keys: list[str], ylabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # the object API needs no pyplot state and is thread safe

    fig = Figure(figsize=(5, 3.2), dpi=100)
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in rows]
    for k in keys:
        ax.plot(epochs, [r.get(k, float("nan")) for r in rows], marker="o", ms=3, label=k.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from ..storage import discard, writing

    tmp = Path(path).with_suffix(".part.png")
    with writing(Path(path).parent, Path(path).name):
        try:
            fig.savefig(tmp)
            tmp.replace(path)
        except BaseException:
            discard(tmp)
            raise
    return Path(path)
