"""Our encoder: a compact ResNet-style CNN, randomly initialised, sized for 2 CPU cores.

No model-zoo class and no pretrained weights: the architecture is this file, built from the
config in its weights' metadata, so one safetensors file is enough to rebuild it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from illustra.config import yaml_defaults
from illustra.train.device import for_inference
from illustra.weights import load_weights, with_prefix


@dataclass(frozen=True)
@yaml_defaults("ssl.yaml", "encoder")
class EncoderConfig:
    """Architecture of the encoder; stored in every weights file's metadata."""

    width: int  # channels of the first stage; doubled at every later stage
    stages: int
    blocks_per_stage: int
    input_size: int  # pixels of the square input
    stem_stride: int  # 1 keeps full resolution for 32-64 px inputs

    @property
    def feature_dim(self) -> int:
        """Size of the pooled feature vector (the embedding)."""
        return self.width * 2 ** (self.stages - 1)

    def to_dict(self) -> dict:
        """Plain dict for metadata."""
        return asdict(self)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        nn.init.zeros_(self.bn2.weight)  # zero-init residual: each block starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Encoder(nn.Module):
    """Stem, `stages` stages of basic blocks (stride 2 between stages), global average pool."""

    def __init__(self, config: EncoderConfig = EncoderConfig()) -> None:
        super().__init__()
        self.config = config
        self.stem = nn.Sequential(nn.Conv2d(3, config.width, 3, config.stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(config.width), nn.ReLU(inplace=True))
        layers, channels = [], config.width
        for stage in range(config.stages):
            out_channels = config.width * 2**stage
            for block in range(config.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @property
    def feature_dim(self) -> int:
        """Size of the feature vector this encoder outputs."""
        return self.config.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), normalised -> features (B, feature_dim)."""
        return self.pool(self.body(self.stem(x))).flatten(1)


def load_encoder(path, device: str | torch.device = "cpu") -> tuple[Encoder, dict]:
    """Rebuild an encoder from its weights file (architecture from metadata); eval mode. No pickle."""
    tensors, meta = load_weights(path, device)
    architecture = meta.get("architecture")
    if architecture is None:
        raise ValueError(f"{path} has no 'architecture' metadata: not an illustra encoder or classifier")
    encoder = for_inference(Encoder(EncoderConfig(**architecture)), torch.device(device))
    encoder.load_state_dict(with_prefix(tensors, "encoder"))
    return encoder.eval(), meta
