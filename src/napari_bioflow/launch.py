"""Open napari with the sample data and the Train and Predict docks (the README's main command with a display)."""

from __future__ import annotations


def main() -> None:
    import napari

    viewer = napari.Viewer(title="napari-bioflow")
    viewer.open_sample("napari-bioflow", "bbbc007_nuclei")
    viewer.window.add_plugin_dock_widget("napari-bioflow", "Train")
    viewer.window.add_plugin_dock_widget("napari-bioflow", "Predict")
    napari.run()


if __name__ == "__main__":
    main()
