"""Squeeze-and-excitation U-Nets for 2D and 3D: ``seunet`` (BiaPy's SEUNet) and ``resunet_se`` (BiaPy's ResUNet SE).

Both are ``unet.UNet`` (same levels, defaults and parameter names as ``unet`` / ``resunet``) with
squeeze-and-excitation (Hu et al. 2018, ``blocks.SqueezeExcite``: global average pool, two bias-free linear
layers ``channels // se_reduction`` wide, ReLU then sigmoid, channels rescaled) in every level, the bottleneck
included:
    seunet       after each conv's norm and activation: ``encoder.{i}.se1`` / ``se2``, ``decoder.{j}.se1`` / ``se2``
    resunet_se   once per residual block, on the residual branch before it joins the shortcut (SE-ResNet's
                 place): ``encoder.{i}.se2``, ``decoder.{j}.se2``
So a ``unet`` checkpoint starts a ``seunet`` and a ``resunet`` checkpoint a ``resunet_se`` (every tensor but the
SE layers loads by name). With BiaPy's default feature maps (16-32-64-128-256) and 1 input and 1 output channel:
seunet 1,975,985 parameters in 2D, resunet_se 2,047,905.
"""

from __future__ import annotations

from .registry import register_model
from .unet import FEATURE_MAPS, UNet


@register_model("seunet")
def seunet(
    *,
    ndim,
    in_channels,
    out_channels,
    feature_maps=FEATURE_MAPS,
    norm="instance",
    activation="elu",
    dropout=0.0,
    kernel_size=3,
    upsample="transpose",
    z_down=True,
    se_reduction=16,
):
    """SE U-Net: a U-Net with squeeze-and-excitation after every conv (BiaPy's SEUNet)."""
    return UNet(
        ndim,
        in_channels,
        out_channels,
        feature_maps=feature_maps,
        norm=norm,
        act=activation,
        drop=dropout,
        kernel_size=kernel_size,
        upsample=upsample,
        z_down=z_down,
        se=se_reduction,
    )


@register_model("resunet_se")
def resunet_se(
    *,
    ndim,
    in_channels,
    out_channels,
    feature_maps=FEATURE_MAPS,
    norm="instance",
    activation="elu",
    dropout=0.0,
    kernel_size=3,
    upsample="transpose",
    z_down=True,
    se_reduction=16,
):
    """Residual U-Net with squeeze-and-excitation on every residual branch (BiaPy's ResUNet SE)."""
    return UNet(
        ndim,
        in_channels,
        out_channels,
        feature_maps=feature_maps,
        norm=norm,
        act=activation,
        drop=dropout,
        kernel_size=kernel_size,
        upsample=upsample,
        z_down=z_down,
        residual=True,
        se=se_reduction,
    )
