"""EfficientNet B0 to B7 from timm (2D), built without any download.

timm derives each size's head width from its width multiplier (B0 1280 ... B7 2560 features), which is what
BiaPy 3.7.1 gets wrong for B2 to B7; a test builds and trains every size.
"""

from __future__ import annotations

from .registry import register_model

SIZES = tuple(f"b{i}" for i in range(8))


def _builder(size: str):
    def build(*, ndim, in_channels, out_channels, drop_rate=0.2, drop_path_rate=0.0):
        import timm  # lazy: importing timm costs seconds

        model = timm.create_model(
            f"efficientnet_{size}",
            pretrained=False,
            num_classes=out_channels,
            in_chans=in_channels,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
        )
        model.size_divisor = 1
        return model

    build.__name__ = f"efficientnet_{size}"
    return build


for _size in SIZES:
    register_model(f"efficientnet_{_size}", ndims=(2,), task="classification")(_builder(_size))
