"""Command line: the same engine calls as the widgets. A user's mistake prints one line and exits 2.

    napari-bioflow init semantic_segmentation -o my.yaml    commented starting config (also image_to_image,
                                                            classification, self_supervised --pretext crappify|masking)
    napari-bioflow train my.yaml --set train.epochs=5       train (then predict data.test_raw if set)
    napari-bioflow predict my.yaml --set predict.checkpoint=...   or   predict --checkpoint C --input DIR
    napari-bioflow batch --checkpoint C --input DIR [--workers N | --scheduler ADDR]   a whole folder, resumable
    napari-bioflow sample                                   the main job on the shipped sample data
    napari-bioflow docs -o docs/config.md                   regenerate the config reference

Under torchrun (`torchrun --nproc_per_node N -m napari_bioflow.cli train my.yaml`) training is distributed
(docs/distributed_training.md): rank 0 prints, writes and predicts; every rank prints one line tagged with its rank.
"""

from .common import FAILED_FILES
from .main import build_parser, main

__all__ = ["FAILED_FILES", "build_parser", "main"]
