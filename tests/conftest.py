"""Shared fixtures of every test layer (engine/, cli/, widgets/); plain helpers live in helpers.py."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `from helpers import ...` from every sub-folder

import importlib.util  # noqa: E402
import os  # noqa: E402

# Qt: PyQt6 (the gui/testing extras) unless QT_API says otherwise; qtpy (napari) and pytest-qt must use the same
# binding, and with PyQt5 also installed qtpy would take PyQt5 and pytest-qt PyQt6. QT_API=pyqt5 tests PyQt5.
if "QT_API" not in os.environ and importlib.util.find_spec("PyQt6") is not None:
    os.environ["QT_API"] = "pyqt6"
if os.environ.get("QT_API") in ("pyqt5", "pyqt6", "pyside6"):
    os.environ.setdefault("PYTEST_QT_API", os.environ["QT_API"])

from napari_bioflow.widgets.shared import load_triton_safely  # noqa: E402

# torch imports triton lazily; once a viewer's software OpenGL (Mesa llvmpipe, as under Xvfb) is loaded, that import
# crashes the process unless triton is loaded first (see load_triton_safely). Load it before any viewer exists.
load_triton_safely()


@pytest.fixture
def wait_idle(qtbot):
    """wait_idle(widget, seconds): wait until a widget's worker has finished."""

    def wait(widget, seconds: float = 60):
        qtbot.waitUntil(lambda: not widget.running, timeout=int(seconds * 1000))

    return wait


@pytest.fixture
def messages(monkeypatch):
    """show_error / show_info calls of the Train and Predict docks, in order."""
    from napari_bioflow.widgets import predict as predict_module
    from napari_bioflow.widgets import train as train_module

    shown = {"error": [], "info": []}
    for module in (train_module, predict_module):
        monkeypatch.setattr(module, "show_error", shown["error"].append)
        monkeypatch.setattr(module, "show_info", shown["info"].append)
    return shown
