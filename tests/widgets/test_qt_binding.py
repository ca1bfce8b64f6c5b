"""The docks run on the binding of the gui/testing extras (PyQt6), and napari shows no Qt deprecation warning."""

import importlib.util
import os

import pytest


def test_qt_binding_is_pyqt6_unless_chosen(make_napari_viewer, qtbot):
    import qtpy
    from pytestqt.qt_compat import qt_api

    wanted = os.environ.get("QT_API", "pyqt6")
    if wanted == "pyqt6" and importlib.util.find_spec("PyQt6") is None:
        pytest.skip("PyQt6 is not installed")
    assert qtpy.API_NAME.lower() == wanted
    assert qt_api.pytest_qt_api == wanted  # pytest-qt drives the same binding as napari
    from napari._qt import qt_main_window
    from napari.utils.notifications import notification_manager

    from napari_bioflow.widgets.train import TrainWidget

    viewer = make_napari_viewer(show=True)
    viewer.window.add_dock_widget(TrainWidget(viewer))
    qtbot.wait(50)
    if wanted == "pyqt6":
        assert qt_main_window.SHOW_QT_WARNING is False  # napari warns "PyQt5 backend is deprecated" on PyQt5 only
        shown = [str(n.message) for n in notification_manager.records]
        assert not [m for m in shown if "PyQt5 backend" in m]
