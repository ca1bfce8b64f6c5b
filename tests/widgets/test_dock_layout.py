"""The docks fit a 1366x768 laptop screen (issue 11 item 2): the window never grows taller than the screen, and
every tab's buttons and progress bars (and the Train chart) are in view without scrolling."""

from qtpy.QtWidgets import QApplication, QScrollArea

from napari_bioflow.sample_data import bbbc007_nuclei


def settle(qtbot, ms: int = 300) -> None:
    qtbot.wait(ms)
    QApplication.processEvents()


def in_view(widget, window) -> bool:
    """Shown whole inside the window: not hidden, not scrolled away, not cut by the window's edge."""
    if not widget.isVisible() or widget.visibleRegion().isEmpty():
        return False
    top_left = widget.mapTo(window, widget.rect().topLeft())
    bottom_right = widget.mapTo(window, widget.rect().bottomRight())
    visible = widget.visibleRegion().boundingRect()
    return window.rect().contains(top_left) and window.rect().contains(bottom_right) and visible == widget.rect()


def laptop_viewer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    for data, meta, kind in bbbc007_nuclei():
        getattr(viewer, f"add_{kind}")(data, **meta)
    viewer.window._qt_window.resize(1366, 768)
    settle(qtbot)
    return viewer


def test_the_bioflow_dock_fits_1366x768(make_napari_viewer, qtbot):
    viewer = laptop_viewer(make_napari_viewer, qtbot)
    window = viewer.window._qt_window
    _, dock = viewer.window.add_plugin_dock_widget("napari-bioflow", "bioflow")
    window.resize(1366, 768)
    settle(qtbot)
    wanted = {
        dock.train: [dock.train.train_button.native, dock.train.cancel_button.native, dock.train.progress.native]
        + [dock.train.chart, dock.train.message.native],
        dock.predict: [dock.predict.predict_button.native, dock.predict.progress.native, dock.predict.message.native],
        dock.batch: [dock.batch.run_button.native, dock.batch.overall.native, dock.batch.message.native],
        dock.runs: [dock.runs.table, dock.runs.layers_button.native],
    }
    for tab, widgets in wanted.items():
        dock.tabs.setCurrentWidget(tab)
        settle(qtbot)
        assert window.height() <= 768
        out = [w.objectName() or type(w).__name__ for w in widgets if not in_view(w, window)]
        assert not out, f"{type(tab).__name__}: not in view at 1366x768: {out}"
        for area in tab.findChildren(QScrollArea):  # the fields fit the dock's width: nothing cut on the right
            if area.isVisible() and area.widget() is not None:
                need = area.widget().minimumSizeHint().width()
                assert need <= area.viewport().width(), f"{type(tab).__name__}: fields need {need} px"
    assert dock.width() <= 420  # the canvas keeps most of the width


def test_the_three_docks_together_never_make_the_window_taller(make_napari_viewer, qtbot):
    viewer = laptop_viewer(make_napari_viewer, qtbot)
    window = viewer.window._qt_window
    docks = [viewer.window.add_plugin_dock_widget("napari-bioflow", name)[1] for name in ("Train", "Predict", "Batch")]
    window.resize(1366, 768)
    settle(qtbot)
    assert window.height() <= 768
    assert window.minimumSizeHint().height() <= 768
    assert all(dock.isVisible() for dock in docks)
