"""napari-bioflow: deep-learning workflows for microscopy in napari."""

__version__ = "0.1.0"
