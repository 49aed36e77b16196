"""Networks built from config: an MLP for tabular features and a compact CNN for small images,
with the output size the task needs, and batched on-device augmentation for images."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.config.choices import ACTIVATIONS, NETWORKS, NORMS
from pipeline.errors import ConfigError


@dataclass
class NetworkSpec:
    """Everything needed to rebuild a network before loading its weights."""

    kind: str
    task: str
    n_features: int
    n_outputs: int
    hidden: list[int] = field(default_factory=list)
    activation: str = "relu"
    dropout: float = 0.0
    norm: str = "none"
    channels: list[int] = field(default_factory=list)
    image_shape: list[int] | None = None
    # model=tabular: the numbers come first in its input, then one code per category
    n_numeric: int = 0
    cardinalities: list[int] = field(default_factory=list)
    members: int = 1
    numeric_embedding: str = "periodic"
    d_embedding: int = 16
    n_frequencies: int = 16
    frequency_scale: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def encoding(self) -> str:
        """The features the network takes: robust numbers and category codes, or one-hot."""
        return encoding_of(self.kind)


def encoding_of(network: str) -> str:
    return "codes" if network == "tabular" else "onehot"


def output_size(task: str, n_classes: int) -> int:
    return n_classes if task == "multiclass" else 1


def network_spec(
    model_cfg: Any,
    task: str,
    n_features: int,
    n_classes: int,
    image_shape: tuple[int, ...] | None,
    layout: tuple[int, list[int]] | None = None,
) -> NetworkSpec:
    """`layout`: (numbers, cardinalities) of coded features (model=tabular)."""
    if model_cfg.name == "cnn" and image_shape is None:
        raise ConfigError(
            "model=cnn needs an image data set (data=digits); this data set is a table: use model=mlp"
        )
    if model_cfg.name == "tabular" and layout is None:
        raise ConfigError(
            "model=tabular needs a table (data=table or a built-in table); for images use model=cnn"
        )
    n_numeric, cardinalities = layout or (0, [])
    return NetworkSpec(
        n_numeric=n_numeric,
        cardinalities=list(cardinalities),
        members=int(model_cfg.members) if model_cfg.name == "tabular" else 1,
        numeric_embedding=str(model_cfg.numeric_embedding),
        d_embedding=int(model_cfg.d_embedding),
        n_frequencies=int(model_cfg.n_frequencies),
        frequency_scale=float(model_cfg.frequency_scale),
        kind=model_cfg.name,
        task=task,
        n_features=n_features,
        n_outputs=output_size(task, n_classes),
        hidden=[int(h) for h in model_cfg.hidden],
        activation=model_cfg.activation,
        dropout=float(model_cfg.dropout),
        norm=model_cfg.norm,
        channels=[int(c) for c in model_cfg.channels],
        image_shape=list(image_shape) if image_shape else None,
    )


class MLP(nn.Module):
    def __init__(self, spec: NetworkSpec):
        super().__init__()
        layers: list[nn.Module] = []
        width = spec.n_features
        for hidden in spec.hidden:
            layers += [
                nn.Linear(width, hidden),
                NORMS[spec.norm](hidden),
                ACTIVATIONS[spec.activation](),
                nn.Dropout(spec.dropout),
            ]
            width = hidden
        layers.append(nn.Linear(width, spec.n_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CNN(nn.Module):
    """Conv blocks (conv, norm, activation; pooling after all but the first), global average
    pooling to 2x2, then a small dense head."""

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        assert spec.image_shape is not None
        self.image_shape = tuple(spec.image_shape)
        in_channels = self.image_shape[0]
        blocks: list[nn.Module] = []
        for i, channels in enumerate(spec.channels):
            blocks += [
                nn.Conv2d(in_channels, channels, kernel_size=3, padding=1),
                nn.BatchNorm2d(channels) if spec.norm == "batch" else nn.Identity(),
                ACTIVATIONS[spec.activation](),
            ]
            if i > 0:
                blocks.append(nn.MaxPool2d(2))
            in_channels = channels
        blocks.append(nn.AdaptiveAvgPool2d(2))
        self.features = nn.Sequential(*blocks)
        width = in_channels * 4
        head: list[nn.Module] = [nn.Flatten(), nn.Dropout(spec.dropout)]
        for hidden in spec.hidden:
            head += [nn.Linear(width, hidden), ACTIVATIONS[spec.activation](), nn.Dropout(spec.dropout)]
            width = hidden
        head.append(nn.Linear(width, spec.n_outputs))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, *self.image_shape)))


def build_network(spec: NetworkSpec) -> nn.Module:
    return NETWORKS[spec.kind](spec)


def parameter_count(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


class ImageAugmentation:
    """Random shifts, small rotations and noise on a batch of flattened images, as one affine
    resampling on the batch's device. The background (each image's minimum, i.e. blank pixels
    after global scaling) is what enters from outside the frame."""

    def __init__(
        self, image_shape: tuple[int, ...], max_shift: int, max_rotation_degrees: float, noise_std: float
    ):
        self.image_shape = image_shape
        self.max_shift = max_shift
        self.max_rotation = math.radians(max_rotation_degrees)
        self.noise_std = noise_std

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        images = x.view(n, *self.image_shape)
        height, width = self.image_shape[-2:]
        device = x.device

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(n, generator=generator, device=device) * (high - low) + low

        angle = uniform(-self.max_rotation, self.max_rotation)
        # whole-pixel shifts, expressed in grid_sample's [-1, 1] coordinates
        shift_x = torch.randint(
            -self.max_shift, self.max_shift + 1, (n,), generator=generator, device=device
        ) * (2.0 / width)
        shift_y = torch.randint(
            -self.max_shift, self.max_shift + 1, (n,), generator=generator, device=device
        ) * (2.0 / height)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        background = images.amin(dim=(1, 2, 3), keepdim=True)
        moved = F.grid_sample(images - background, grid, align_corners=False, padding_mode="zeros")
        moved = moved + background
        if self.noise_std > 0:
            moved = moved + torch.randn(moved.shape, generator=generator, device=device) * self.noise_std
        return moved.reshape(n, -1)
