"""The network a BioImage Model Zoo package runs: a registered napari-bioflow model followed by its workflow's
activation (softmax for class probabilities, none for images), so every weight format gives what the plugin
blends. The pytorch_state_dict weights name this class (`napari_bioflow.engine.export.architecture.BioflowNet`)
with its keyword arguments: loading them needs napari-bioflow installed; the TorchScript and ONNX weights need
nothing of it."""

from __future__ import annotations

from torch import nn

ACTIVATIONS = ("softmax", "none")


class BioflowNet(nn.Module):
    """`model` built from the registry (`model_name`, `options`, shapes) and then `activation` over the channel
    axis. Its state dict is the model's under the prefix "net."."""

    def __init__(
        self,
        model_name: str,
        ndim: int,
        in_channels: int,
        out_channels: int,
        options: dict | None = None,
        activation: str = "none",
    ):
        super().__init__()
        from ..models import create_model

        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.net = create_model(
            model_name, ndim=ndim, in_channels=in_channels, out_channels=out_channels, **(options or {})
        )
        self.activation = activation

    def forward(self, x):
        y = self.net(x)
        if self.activation == "softmax":
            y = y.float().softmax(1)
        return y


def wrap(model, activation: str) -> BioflowNet:
    """A BioflowNet around an already built (trained) model, without building a second one."""
    net = BioflowNet.__new__(BioflowNet)
    nn.Module.__init__(net)
    net.net = model
    net.activation = activation
    return net.eval()
