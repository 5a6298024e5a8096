"""A user's model for the study: a small ResNet with BatchNorm, built from params.yaml with no edit inside selenc.

`examples/resnet.params.yaml` adds it: a `models.resnet` entry naming this builder (`examples.resnet:resnet`), and
its sweep grid and frontier search. The study calls the builder with the arguments its signature names among those
it provides (`channels`, `num_classes`, `image_size`) and the entry's other keys (`width`, `stages`), checked against
the annotations below. BatchNorm runs as the entry's `mode` says: `train` (the client's usual forward: each batch's
own statistics) or `eval` (running statistics).
"""

from typing import Annotated

from pydantic import Field
from torch import nn


class Block(nn.Module):
    """A basic residual block: two 3x3 conv + BatchNorm, a 1x1 conv shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        same = stride == 1 and c_in == c_out
        project = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if same else project
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int, stages: int):
        super().__init__()
        layers = [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        c = width
        for i in range(stages):
            layers.append(Block(c, width * 2**i, stride=1 if i == 0 else 2))
            c = width * 2**i
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def resnet(
    channels: int,
    num_classes: int,
    width: Annotated[int, Field(gt=0)] = 8,
    stages: Annotated[int, Field(ge=1, le=4)] = 2,
) -> nn.Module:
    """A ResNet of `stages` residual stages, the first `width` channels wide, each later one twice as wide at half
    the resolution."""
    return ResNet(channels, num_classes, width, stages)
