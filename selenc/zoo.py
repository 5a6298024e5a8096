"""The built-in victim models and tokenizer sources: builders that `params.yaml` names like any user's model.

A builder is any importable callable returning a `torch.nn.Module` (`models.<name>.builder: "package.module:function"`).
It takes keyword arguments only: those of its signature that the study provides (`models.CONTEXT`: `channels`,
`num_classes`, `image_size` for images; `tokenizer`, `num_classes`, `max_length` for text), and the rest from the
model's params entry (its keys beyond the entry's own), with their annotations and defaults as the schema. An image
model maps (B, C, H, W) in [0, 1] to class logits; a text model is a transformers sequence classifier.

- `lenet`: the DLG LeNet: three 5x5 convs with 12 channels and sigmoids, one linear layer, 32x32 input. MNIST's
  28x28 digits are zero-padded to 32x32 (as in the original LeNet-5), so only the input channels differ.
- `convnet`: a ReLU conv net; `depth` 3x3 conv blocks, the first with `width` channels, each later one doubling the
  channels and halving the resolution; then one linear layer.
- `minilm_bert`: `BertForSequenceClassification` on the pretrained all-MiniLM-L6-v2 encoder (read in place from
  the installed package), with a new seeded head.
- `gpt2`: `GPT2ForSequenceClassification` with **random** weights (no pretrained GPT-2 weights can be installed
  offline), its size from params.

Tokenizers (`models.<name>.tokenizer`): `wordpiece` (MiniLM's uncased WordPiece) and `bpe` (GPT-2's byte-level BPE),
both from data/.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from torch import nn

from selenc import data

PosInt = Annotated[int, Field(gt=0)]


class LeNet(nn.Module):
    """DLG's LeNet: sigmoid activations, 12 channels, 5x5 kernels, 32x32 input."""

    def __init__(self, channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 12, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1),
            nn.Sigmoid(),
        )
        self.fc = nn.Linear(12 * 8 * 8, num_classes)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


class ConvNet(nn.Module):
    """A ReLU CNN of configurable width and depth."""

    def __init__(self, channels: int, num_classes: int, width: int, depth: int, image_size: int):
        super().__init__()
        layers, c_in, side = [], channels, image_size
        for i in range(depth):
            c_out = width * 2**i
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU()]
            c_in, side = c_out, -(-side // stride)
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * side * side, num_classes)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


def lenet(channels: int, num_classes: int, init: Literal["uniform", "default"] = "uniform") -> nn.Module:
    """DLG's LeNet; `init`: uniform (DLG's U(-0.5, 0.5) weights) | default (PyTorch's)."""
    model = LeNet(channels, num_classes)
    if init == "uniform":
        for p in model.parameters():
            nn.init.uniform_(p, -0.5, 0.5)
    return model


def convnet(
    channels: int,
    num_classes: int,
    image_size: int,
    width: PosInt = 16,
    depth: Annotated[int, Field(gt=0, le=6)] = 3,  # stride-2 blocks after the first: 32 px allows at most 6
) -> nn.Module:
    """A ReLU CNN: `depth` conv blocks, the first with `width` channels."""
    return ConvNet(channels, num_classes, width, depth, image_size)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def minilm_bert(num_classes: int) -> nn.Module:
    """The pretrained MiniLM encoder (a BERT) with a new seeded classification head."""
    from transformers import BertForSequenceClassification

    _quiet_transformers()
    path = data.minilm_dir()
    return BertForSequenceClassification.from_pretrained(path, num_labels=num_classes, attn_implementation="eager")


def gpt2(
    tokenizer, num_classes: int, max_length: int, n_layer: PosInt, n_head: PosInt, n_embd: PosInt, n_positions: PosInt
) -> nn.Module:
    """A randomly initialised GPT-2 classifier of the given size (GPT-2 small: 12 layers, 12 heads, 768, 1024)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} must be a multiple of n_head={n_head}")
    if max_length > n_positions:
        raise ValueError(
            f"max_length={max_length} exceeds n_positions={n_positions}; allowed: max_length <= n_positions"
        )
    _quiet_transformers()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_positions=n_positions,
        num_labels=num_classes,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = "eager"
    return GPT2ForSequenceClassification(config)


def wordpiece():
    """MiniLM's uncased WordPiece tokenizer ([CLS] ... [SEP])."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    return AutoTokenizer.from_pretrained(data.minilm_dir())


def bpe():
    """GPT-2's byte-level BPE tokenizer; it has no pad token, so padding reuses the end-of-text token (a decoder
    classifier reads the last non-pad position)."""
    from transformers import GPT2TokenizerFast

    _quiet_transformers()
    tok = GPT2TokenizerFast.from_pretrained(data.gpt2_tokenizer_dir())
    tok.pad_token = tok.eos_token
    return tok


TOKENIZERS = {"wordpiece": wordpiece, "bpe": bpe}
