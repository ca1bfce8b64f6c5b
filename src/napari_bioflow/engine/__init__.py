"""The engine: plain Python (no Qt, no napari). Configs in; arrays, files and checkpoints out."""
