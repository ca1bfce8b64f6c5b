"""The notebooks of notebooks/ run offline, top to bottom, on the sample data with small epoch counts (nbclient).

The kernel is this interpreter: a `python3` kernel spec pointing at sys.executable is written into a temporary
JUPYTER_PATH (runtime files and IPython's profile go to temporary folders too), so the user's home is not touched
and a `python3` kernel installed elsewhere cannot take its place."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
EXPECTED = {
    "semantic_segmentation_2d",
    "semantic_segmentation_3d",
    "image_to_image_2d",
    "self_supervised_crappify_2d",
    "classification_2d",
}


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("BIOFLOW_EPOCHS", "1")
    monkeypatch.setenv("BIOFLOW_OUTPUT", str(tmp_path / "runs"))
    return tmp_path


def test_one_notebook_per_workflow():
    assert {p.stem for p in NOTEBOOKS.glob("*.ipynb")} == EXPECTED


def test_kernel_is_this_interpreter(kernel_env):
    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs(name, kernel_env):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    text = "\n".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("name") == "stdout"
    )
    assert "best checkpoint:" in text
    runs = kernel_env / "runs"
    # the run went to BIOFLOW_OUTPUT, never next to the notebooks
    assert any(runs.glob("*/checkpoints/*-checkpoint-best.pth"))
    assert not (NOTEBOOKS / "bioflow_runs").exists()
