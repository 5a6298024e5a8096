"""The four victim models, built from params with a seeded init on the chosen device.

- `lenet`: the DLG LeNet: three 5x5 convs with 12 channels and sigmoids, one linear layer, 32x32 input.
  MNIST's 28x28 digits are zero-padded to 32x32 (as in the original LeNet-5), so the architecture is the same
  for both datasets except for the number of input channels (1 or 3).
- `cnn`: a ReLU conv net; `depth` 3x3 conv blocks, the first with `width` channels, each later one doubling the
  channels and halving the resolution; then one linear layer.
- `bert`: `BertForSequenceClassification` on the pretrained all-MiniLM-L6-v2 encoder (read in place from the
  installed package), with a new seeded 2-label head.
- `gpt2`: `GPT2ForSequenceClassification` with the real GPT-2 tokenizer and **random** weights: no pretrained
  GPT-2 weights can be installed offline. Its size comes from params.

Every model runs in eval mode (no dropout): the shared update is then a deterministic function of the batch,
which the attacks and the theory assume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from selenc import data
from selenc.settings import ARCH_MODALITY, Params, Pretrain, derive_seed

NUM_CLASSES = {"mnist": 10, "cifar10": 10, "rotten_tomatoes": 2}
CHANNELS = {"mnist": 1, "cifar10": 3}


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("study.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


class ConvNet(nn.Module):
    """A ReLU CNN of configurable width and depth for 32x32 inputs."""

    def __init__(self, channels: int = 3, num_classes: int = 10, width: int = 16, depth: int = 3):
        super().__init__()
        layers, c_in, side = [], channels, data.IMAGE_SIZE
        for i in range(depth):
            c_out = width * 2**i
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU()]
            c_in, side = c_out, side // stride
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


@dataclass
class Batch:
    """One client batch on the model's device: images (B, C, H, W) or token ids (B, T) with their mask.

    Text batches may instead hold float embeddings (B, T, E) as `inputs` (what embedding-space attacks optimise), or
    token ids plus an `input_offset` (B, T, E) added to their embeddings: a continuous input around the real tokens
    whose update still has gradient rows at those tokens (used by input-derivative metrics).
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None = None
    input_offset: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Victim:
    """A model with what the study needs around it: modality, device, tokenizer and input metadata."""

    arch: str
    model: nn.Module
    device: torch.device
    num_classes: int
    input_shape: tuple[int, ...]  # (C, H, W) for images, (max_length,) for text
    tokenizer: object | None = None
    pretrain_losses: list[float] = field(default_factory=list)

    @property
    def modality(self) -> str:
        return ARCH_MODALITY[self.arch]

    def _named(self, tensor: torch.Tensor | None) -> tuple[str, nn.Parameter] | None:
        return None if tensor is None else next((n, p) for n, p in self.model.named_parameters() if p is tensor)

    def word_embedding(self) -> tuple[str, nn.Parameter] | None:
        """(name, parameter) of the token-embedding table (BERT, GPT-2); None for the image models."""
        return self._named(self.model.get_input_embeddings().weight) if self.modality == "text" else None

    def input_layer(self) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
        """How the model turns word embeddings into its first hidden states: (position table, constant offset, whether
        a LayerNorm follows). BERT: LN(w + pos + type_0); GPT-2: w + wpe (its LayerNorms sit inside the blocks); None
        for the image models."""
        if self.arch == "bert":
            emb = self.model.bert.embeddings
            return emb.position_embeddings.weight, emb.token_type_embeddings.weight.detach()[0], True
        if self.arch == "gpt2":
            wpe = self.model.transformer.wpe.weight
            return wpe, torch.zeros_like(wpe[0]).detach(), False
        return None

    def position_embedding(self) -> tuple[str, nn.Parameter] | None:
        """(name, parameter) of the learned absolute position embeddings (BERT, GPT-2), or None."""
        layer = self.input_layer()
        return None if layer is None else self._named(layer[0])

    def head_bias(self) -> tuple[str, nn.Parameter] | None:
        """(name, parameter) of a text classifier head's bias (BERT's `classifier.bias`); None without one (GPT-2)."""
        head = getattr(self.model, "classifier", None) or getattr(self.model, "score", None)
        return self._named(getattr(head, "bias", None))

    @property
    def causal(self) -> bool:
        """Whether a position's hidden states depend only on the tokens up to it (GPT-2), not the whole sentence."""
        return self.arch == "gpt2"

    @property
    def blocks(self) -> int:
        """Transformer blocks of a text model (0 for the image models)."""
        config = getattr(self.model, "config", None)
        return getattr(config, "n_layer", None) or getattr(config, "num_hidden_layers", 0) if config else 0

    def attention_projections(self, block: int) -> list[tuple[str, bool]]:
        """(parameter name, whether its gradient's rows are input-space vectors) for the attention input projections
        of transformer `block` (text models): every row (BERT's Linear query/key/value) or column (GPT-2's Conv1D
        c_attn) of their weight gradient is a combination of the block's input rows (`block_inputs`)."""
        if self.arch == "gpt2":
            return [(f"transformer.h.{block}.attn.c_attn.weight", False)]
        if self.arch == "bert":
            stem = f"bert.encoder.layer.{block}.attention.self"
            return [(f"{stem}.{k}.weight", True) for k in ("query", "key", "value")]
        raise ValueError(f"{self.arch} has no attention blocks")

    def block_inputs(self, ids: torch.Tensor, attention_mask: torch.Tensor, block: int) -> torch.Tensor:
        """(B, T, d): the rows transformer `block`'s attention projections multiply for token ids (B, T), captured
        by a forward hook on the projection."""
        name = self.attention_projections(block)[0][0].removesuffix(".weight")
        module = dict(self.model.named_modules())[name]
        labels = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        return module_input(module, lambda: self.logits(Batch(ids, labels, attention_mask)))

    def first_block_inputs(self, ids: torch.Tensor, position: int) -> torch.Tensor:
        """(N, d): block 0's attention input for each token of `ids` (N,) placed at `position`. Each such row depends
        on its own token and position alone (embeddings, then a LayerNorm), so no forward pass is needed."""
        if self.arch == "gpt2":
            t = self.model.transformer
            return t.h[0].ln_1(t.wte.weight[ids] + t.wpe.weight[position])
        if self.arch == "bert":
            e = self.model.bert.embeddings
            offset = e.position_embeddings.weight[position] + e.token_type_embeddings.weight[0]
            return e.LayerNorm(e.word_embeddings.weight[ids] + offset)
        raise ValueError(f"{self.arch} has no attention blocks")

    def image_batch(self, images: data.Images) -> Batch:
        x = data.to_tensor(images.images, self.input_shape[0]).to(self.device)
        return Batch(x, torch.as_tensor(images.labels, device=self.device))

    def text_batch(self, sentences: list[data.Sentence]) -> Batch:
        enc = self.tokenizer(
            [s.text for s in sentences],
            padding=True,
            truncation=True,
            max_length=self.input_shape[0],
            return_tensors="pt",
        )
        labels = torch.tensor([s.label for s in sentences], device=self.device)
        return Batch(enc["input_ids"].to(self.device), labels, enc["attention_mask"].to(self.device))

    def logits(self, batch: Batch, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Class logits; `params` replaces the model's parameters by name (for updates and attacks).

        Text batches hold token ids (B, T) or, for attacks that optimise embeddings, float embeddings (B, T, E).
        """
        if self.modality == "image":
            return self._call(self.model, params, batch.inputs)
        key = "inputs_embeds" if batch.inputs.is_floating_point() else "input_ids"
        kwargs = {key: batch.inputs, "attention_mask": batch.attention_mask}
        if self.arch == "bert" and batch.attention_mask is not None:
            # the additive (B, 1, 1, T) form: transformers' own mask builder inspects the mask's values, which
            # `torch.func.vmap` (the batched attacks) cannot trace; the logits are the same
            dtype = next(self.model.parameters()).dtype
            keep = batch.attention_mask[:, None, None, :].to(dtype)
            kwargs["attention_mask"] = (1.0 - keep) * torch.finfo(dtype).min
        hook = None
        if batch.input_offset is not None:
            offset = batch.input_offset
            hook = self.model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out + offset)
        try:
            if self.arch == "gpt2":  # pool at the last non-pad position, read from the mask (works for embeddings too)
                hidden = self._call(self.model.transformer, _prefixed(params, "transformer."), **kwargs)[0]
                mask = batch.attention_mask
                last = (mask.sum(1) - 1) if mask is not None else torch.full_like(batch.labels, hidden.shape[1] - 1)
                pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
                return self._call(self.model.score, _prefixed(params, "score."), pooled)
            return self._call(self.model, params, **kwargs).logits
        finally:
            if hook is not None:
                hook.remove()

    @staticmethod
    def _call(module: nn.Module, params: dict[str, torch.Tensor] | None, *args, **kwargs):
        return module(*args, **kwargs) if params is None else functional_call(module, params, args, kwargs)

    def loss(self, batch: Batch, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean cross-entropy of the batch: the client's training loss."""
        return F.cross_entropy(self.logits(batch, params), batch.labels)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


class _Stop(Exception):
    """Ends a forward pass once the module of interest has received its input."""


def module_input(module: nn.Module, forward: Callable[[], object]) -> torch.Tensor:
    """The first positional input `module` receives while `forward()` runs; the forward stops there (no work past
    it). Works under `torch.func` transforms."""
    seen: list[torch.Tensor] = []

    def hook(_module, args):
        seen.append(args[0])
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    try:
        forward()
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


def client_targets(dataset: str, client: int, batch_size: int) -> list[int]:
    """The attack targets client `client` holds in a batch of `batch_size`: client, client + P // B, client + 2P // B,
    ... (P the dataset's target pool). Every client's batch starts with target `client`, whatever its size, so a
    client is the same sample at every batch size, and clients 0 .. P // B − 1 hold disjoint batches."""
    stride = max(data.TARGET_POOL[dataset] // batch_size, 1)
    return [client + k * stride for k in range(batch_size)]


def target_batch(victim: Victim, dataset: str, indices: list[int]) -> Batch:
    """The client batch of attack targets `indices` of `dataset` (wrapping around the pool), on the victim's device."""
    if victim.modality == "image":
        pool = data.target_images(dataset)
        idx = [i % len(pool) for i in indices]
        return victim.image_batch(data.Images(pool.images[idx], pool.labels[idx]))
    pool = data.target_sentences()
    return victim.text_batch([pool[i % len(pool)] for i in indices])


def _prefixed(params: dict[str, torch.Tensor] | None, prefix: str) -> dict[str, torch.Tensor] | None:
    """The entries of `params` under a submodule, renamed relative to it."""
    if params is None:
        return None
    return {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _bert(cfg, num_classes: int):
    from transformers import AutoTokenizer, BertForSequenceClassification

    _quiet_transformers()
    path = data.minilm_dir()
    model = BertForSequenceClassification.from_pretrained(path, num_labels=num_classes, attn_implementation="eager")
    return model, AutoTokenizer.from_pretrained(path)


def _gpt2(cfg, num_classes: int):
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2TokenizerFast

    _quiet_transformers()
    tok = GPT2TokenizerFast.from_pretrained(data.gpt2_tokenizer_dir())
    tok.pad_token = tok.eos_token  # GPT-2 has no pad token; the classifier reads the last non-pad position
    config = GPT2Config(
        vocab_size=len(tok),
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_embd=cfg.n_embd,
        n_positions=cfg.n_positions,
        num_labels=num_classes,
        pad_token_id=tok.pad_token_id,
    )
    config._attn_implementation = "eager"
    return GPT2ForSequenceClassification(config), tok


def init_tags(init: int) -> tuple[str | int, ...]:
    """The seed tags of model initialisation `init`: none for the first (the study's one initialisation before
    `study.model_seeds` existed), ("init", i) for the others."""
    return () if init == 0 else ("init", init)


def build_victim(
    arch: str, params: Params, device: torch.device | None = None, trained: bool = False, init: int = 0
) -> Victim:
    """Build `arch` from params with a seed derived from `study.seed` and the initialisation index `init`; `trained`:
    then trained as `models.<arch>.pretrain` says (the grid's `trained` victim), on the real pretraining pool."""
    if arch not in ARCH_MODALITY:
        raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCH_MODALITY)}")
    cfg = getattr(params.models, arch)
    device = device or resolve_device(params.study.device)
    num_classes = NUM_CLASSES[cfg.dataset]
    tokenizer = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(params.study.seed, "model", arch, *init_tags(init)))
        if arch == "lenet":
            model = LeNet(CHANNELS[cfg.dataset], num_classes)
            if cfg.init == "uniform":
                for p in model.parameters():
                    nn.init.uniform_(p, -0.5, 0.5)
        elif arch == "cnn":
            model = ConvNet(CHANNELS[cfg.dataset], num_classes, cfg.width, cfg.depth)
        elif arch == "bert":
            model, tokenizer = _bert(cfg, num_classes)
        else:
            model, tokenizer = _gpt2(cfg, num_classes)
    model = model.to(device).eval()
    if ARCH_MODALITY[arch] == "image":
        shape = (CHANNELS[cfg.dataset], data.IMAGE_SIZE, data.IMAGE_SIZE)
    else:
        shape = (cfg.max_length,)
    victim = Victim(arch, model, device, num_classes, shape, tokenizer)
    if trained:
        if not cfg.pretrain.epochs:
            raise ValueError(f"a trained {arch} needs models.{arch}.pretrain.epochs > 0")
        seed = derive_seed(params.study.seed, "pretrain", arch, *init_tags(init))
        victim.pretrain_losses = pretrain(victim, cfg.pretrain, seed)
    return victim


def pretrain(victim: Victim, cfg: Pretrain, seed: int) -> list[float]:
    """Short Adam training on the real pretraining pool (never the attack targets); returns the loss per step."""
    if victim.modality == "image":
        pool = data.pretrain_images(cfg.samples)
        n = len(pool)
        make = lambda idx: victim.image_batch(data.Images(pool.images[idx], pool.labels[idx]))  # noqa: E731
    else:
        sentences = data.pretrain_sentences(cfg.samples)
        n = len(sentences)
        make = lambda idx: victim.text_batch([sentences[i] for i in idx])  # noqa: E731
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(victim.model.parameters(), lr=cfg.lr)
    losses = []
    steps = cfg.epochs * -(-n // cfg.batch_size)
    with tqdm(total=steps, desc=f"pretrain {victim.arch}", leave=False) as bar:
        for _ in range(cfg.epochs):
            for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
                opt.zero_grad()
                loss = victim.loss(make(idx.numpy()))
                loss.backward()
                opt.step()
                losses.append(loss.item())
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    victim.model.eval()
    return losses
