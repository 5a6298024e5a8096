"""Victim models: any architecture `params.yaml` names, built by its builder with a seeded init on the chosen device.

A model entry (`models.<name>`) names a builder, any importable callable returning a `torch.nn.Module` (the
built-in ones are in `selenc.zoo`; a user's model file under the project works the same). `build_victim` calls it with
the arguments the study provides (`CONTEXT`) and the entry's own keys, then wraps the module in a `Victim`: the one
interface every other part of the study uses. What the analytic attacks read is discovered from the module (`Layout`):
the last linear layer (`attacks.image.labels`), and for a transformers sequence classifier the token and position
embeddings, the transformer blocks and their attention input projections, whether a LayerNorm follows the embeddings,
whether attention is causal, and the classification head.

Every model runs in eval mode unless its entry says `mode: train` (BatchNorm then normalises with the batch's own
statistics and keeps no running ones, so nothing data-dependent is left on the module). Dropout must then be absent:
the shared update has to be a deterministic function of the batch, which the attacks and the theory assume.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from selenc import data
from selenc.settings import ModelEntry, Params, Pretrain, derive_seed
from selenc.zoo import TOKENIZERS

NUM_CLASSES = {"mnist": 10, "cifar10": 10, "rotten_tomatoes": 2}
CHANNELS = {"mnist": 1, "cifar10": 3}
# what the study hands a builder, per modality: the builder's signature takes the ones it needs
CONTEXT = {"image": ("channels", "num_classes", "image_size"), "text": ("tokenizer", "num_classes", "max_length")}


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("study.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


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


def _linear_like(module: nn.Module) -> bool:
    """A leaf module with a 2-D weight matrix: nn.Linear, or transformers' Conv1D (weight stored (in, out))."""
    weight = getattr(module, "weight", None)
    return (
        not list(module.children())
        and isinstance(weight, torch.Tensor)
        and weight.ndim == 2
        and not isinstance(module, nn.Embedding)
    )


@dataclass(frozen=True)
class Layout:
    """Where a text model keeps what the analytic attacks read, discovered from the module (`discover_layout`)."""

    blocks: tuple[str, ...]  # module names of the transformer blocks, in order
    projections: tuple[tuple[tuple[str, bool], ...], ...]  # per block: (weight name, whether its rows are inputs)
    position: str | None  # parameter name of the learned absolute position table (None: no such table)
    offset: str | None  # parameter name of a table whose row 0 is added to every position (token type 0), or None
    layer_norm: bool  # whether a LayerNorm sits between the summed embeddings and block 0
    causal: bool  # whether position p's hidden states depend only on the tokens up to p
    head: str  # module name of the classification head (the last linear layer with num_classes outputs)


@dataclass
class Victim:
    """A model with what the study needs around it: modality, device, tokenizer and input metadata. `arch` is the
    model's name in params (`models.<arch>`)."""

    arch: str
    model: nn.Module
    device: torch.device
    num_classes: int
    input_shape: tuple[int, ...]  # (C, H, W) for images, (max_length,) for text
    tokenizer: object | None = None
    pretrain_losses: list[float] = field(default_factory=list)
    modality: str = "image"
    mode: str = "eval"  # the client's forward: eval | train (BatchNorm on batch statistics)

    def _named(self, tensor: torch.Tensor | None) -> tuple[str, nn.Parameter] | None:
        return None if tensor is None else next((n, p) for n, p in self.model.named_parameters() if p is tensor)

    def _parameter(self, name: str | None) -> tuple[str, nn.Parameter] | None:
        return None if name is None else (name, self.model.get_parameter(name))

    @functools.cached_property
    def layout(self) -> Layout | None:
        """The text model's discovered layout (None for image models)."""
        return discover_layout(self) if self.modality == "text" else None

    def word_embedding(self) -> tuple[str, nn.Parameter] | None:
        """(name, parameter) of the token-embedding table (text models); None for image models."""
        return self._named(self.model.get_input_embeddings().weight) if self.modality == "text" else None

    def input_layer(self) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
        """How the model turns word embeddings into its first hidden states: (position table, constant offset, whether
        a LayerNorm follows); None for image models and text models without a learned absolute position table."""
        layout = self.layout
        if layout is None or layout.position is None:
            return None
        table = self.model.get_parameter(layout.position)
        offset = self.model.get_parameter(layout.offset).detach()[0] if layout.offset else torch.zeros_like(table[0])
        return table, offset.detach(), layout.layer_norm

    def position_embedding(self) -> tuple[str, nn.Parameter] | None:
        """(name, parameter) of the learned absolute position embeddings, or None."""
        return None if self.layout is None else self._parameter(self.layout.position)

    def head_bias(self) -> tuple[str, nn.Parameter] | None:
        """(name, parameter) of a text classifier head's bias; None without one."""
        if self.layout is None:
            return None
        bias = getattr(self.model.get_submodule(self.layout.head), "bias", None)
        return self._named(bias)

    @property
    def causal(self) -> bool:
        """Whether a position's hidden states depend only on the tokens up to it (a decoder), not the whole sentence."""
        return bool(self.layout and self.layout.causal)

    @property
    def blocks(self) -> int:
        """Transformer blocks of a text model (0 for image models)."""
        return len(self.layout.blocks) if self.layout else 0

    def attention_projections(self, block: int) -> list[tuple[str, bool]]:
        """(weight name, whether its gradient's rows are input-space vectors) for the attention input projections of
        transformer `block` (text models): every row (nn.Linear) or column (transformers' Conv1D) of their weight
        gradient is a combination of the block's input rows (`block_inputs`)."""
        if not self.blocks:
            raise ValueError(f"{self.arch} has no attention blocks")
        return list(self.layout.projections[block])

    def block_inputs(self, ids: torch.Tensor, attention_mask: torch.Tensor, block: int) -> torch.Tensor:
        """(B, T, d): the rows transformer `block`'s attention projections multiply for token ids (B, T), captured
        by a forward hook on the projection."""
        name = self.attention_projections(block)[0][0].removesuffix(".weight")
        module = self.model.get_submodule(name)
        labels = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        return module_input(module, lambda: self.logits(Batch(ids, labels, attention_mask)))

    def first_block_inputs(self, ids: torch.Tensor, position: int) -> torch.Tensor:
        """(N, d): block 0's attention input for each token of `ids` (N,) placed at `position`. Each such row depends
        on its own token and position alone (embeddings, then a normalisation), so each token runs alone, told its
        position."""
        name = self.attention_projections(0)[0][0].removesuffix(".weight")
        tokens = ids[:, None]
        positions = torch.full_like(tokens, position)
        forward = lambda: self.model(input_ids=tokens, position_ids=positions, attention_mask=torch.ones_like(tokens))  # noqa: E731
        return module_input(self.model.get_submodule(name), forward)[:, 0]

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
        layout = self.layout
        if not layout.causal and batch.attention_mask is not None:
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
            if layout.causal:  # pool at the last non-pad position, read from the mask (works for embeddings too)
                prefix = self.model.base_model_prefix
                hidden = self._call(self.model.base_model, _prefixed(params, f"{prefix}."), **kwargs)[0]
                mask = batch.attention_mask
                last = (mask.sum(1) - 1) if mask is not None else torch.full_like(batch.labels, hidden.shape[1] - 1)
                pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
                head = self.model.get_submodule(layout.head)
                return self._call(head, _prefixed(params, f"{layout.head}."), pooled)
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


def discover_layout(victim: Victim) -> Layout:
    """Find what the text attacks read in a transformers sequence classifier, from its structure and a few forward
    passes on two real tokens: the blocks (the ModuleList of `config.num_hidden_layers` modules), each block's
    attention input projections (the first linear layers it calls, all on the same input), the position table (an
    embedding of `config.max_position_embeddings` rows), a token-type table (row 0 is added everywhere), whether block
    0's input is normalised, whether attention is causal (changing a later token leaves position 0 unchanged) and the
    head (the last linear layer with one output per class)."""
    model, config = victim.model, getattr(victim.model, "config", None)
    n_blocks = getattr(config, "num_hidden_layers", None)
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n_blocks]
    if not lists:
        raise ValueError(f"{victim.arch}: no ModuleList of config.num_hidden_layers transformer blocks found")
    stem, blocks = lists[0]
    block_names = tuple(f"{stem}.{i}" for i in range(len(blocks)))
    word = model.get_input_embeddings()
    ids = torch.tensor([victim.tokenizer.encode("a b", add_special_tokens=False)[:2]], device=victim.device)
    ones = torch.ones_like(ids)

    def projections(block: str) -> tuple[tuple[str, bool], ...]:
        calls: list[tuple[str, nn.Module, torch.Tensor]] = []
        handles = [
            m.register_forward_pre_hook(lambda mod, args, name=name: calls.append((name, mod, args[0])))
            for name, m in model.get_submodule(block).named_modules(prefix=block)
            if _linear_like(m)
        ]
        try:
            with torch.no_grad():
                model(input_ids=ids, attention_mask=ones)
        finally:
            for h in handles:
                h.remove()
        if not calls:
            raise ValueError(f"{victim.arch}: block {block} calls no linear layer")
        first = calls[0][2]
        d = first.shape[-1]
        return tuple(
            (f"{name}.weight", isinstance(mod, nn.Linear) or mod.weight.shape[0] != d)
            for name, mod, x in calls
            if x is first
        )

    tables = {m.num_embeddings: n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and m is not word}
    position = tables.get(getattr(config, "max_position_embeddings", None))
    offset = tables.get(getattr(config, "type_vocab_size", None))
    position, offset = (None if n is None else f"{n}.weight" for n in (position, offset))
    layer_norm = False
    with torch.no_grad():
        if position is not None:
            first = module_input(blocks[0], lambda: model(input_ids=ids, attention_mask=ones))
            raw = word(ids) + model.get_parameter(position)[: ids.shape[1]]
            raw = raw + (model.get_parameter(offset)[0] if offset else 0)
            layer_norm = not torch.allclose(first, raw, atol=1e-5, rtol=1e-4)
        later = ids.clone()
        later[0, 1] = (int(ids[0, 1]) + 1) % word.num_embeddings
        hidden = [model.base_model(input_ids=x, attention_mask=ones)[0][0, 0] for x in (ids, later)]
        causal = torch.allclose(hidden[0], hidden[1], rtol=0.0, atol=1e-6)
    heads = [n for n, m in model.named_modules() if _linear_like(m) and _outputs(m) == victim.num_classes]
    if not heads:
        raise ValueError(f"{victim.arch}: no linear layer with {victim.num_classes} outputs (the classification head)")
    return Layout(
        block_names, tuple(projections(b) for b in block_names), position, offset, layer_norm, causal, heads[-1]
    )


def _outputs(module: nn.Module) -> int:
    return module.weight.shape[0] if isinstance(module, nn.Linear) else module.weight.shape[1]


def init_tags(init: int) -> tuple[str | int, ...]:
    """The seed tags of model initialisation `init`: none for the first (the study's one initialisation before
    `study.model_seeds` existed), ("init", i) for the others."""
    return () if init == 0 else ("init", init)


def project_importable() -> None:
    """Make modules of the project (the working directory, where params.yaml and dvc.yaml live) importable, as
    `python -m` does: a model builder may live in a file there (`examples/resnet.py`)."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


def builder_file(entry: ModelEntry) -> Path:
    """The source file of the module the entry's builder lives in."""
    project_importable()
    spec = importlib.util.find_spec(entry.builder.partition(":")[0])
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"no module named {entry.builder.partition(':')[0]!r}")
    return Path(spec.origin)


def import_builder(path: str) -> Callable[..., nn.Module]:
    """The callable `path` ("package.module:function") names; the project root is importable (a local model file).
    Raises ImportError or AttributeError naming what is missing."""
    module_name, _, attr = path.partition(":")
    project_importable()
    module = importlib.import_module(module_name)
    builder = getattr(module, attr, None)
    if not callable(builder):
        raise AttributeError(f"module {module_name!r} has no callable {attr!r}")
    return builder


def builder_options(builder: Callable[..., nn.Module], modality: str) -> dict[str, inspect.Parameter]:
    """The builder's keyword arguments that a model entry sets: its signature minus the study's context."""
    return {n: p for n, p in inspect.signature(builder).parameters.items() if n not in CONTEXT[modality]}


def context(entry: ModelEntry) -> dict[str, object]:
    """What the study hands a builder of `entry` (`CONTEXT`): the dataset's channels and classes, the image side, or
    the tokenizer and the sentence length."""
    if entry.modality == "image":
        return {
            "channels": CHANNELS[entry.dataset],
            "num_classes": NUM_CLASSES[entry.dataset],
            "image_size": data.IMAGE_SIZE,
        }
    tokenizer = TOKENIZERS[entry.tokenizer]()
    return {"tokenizer": tokenizer, "num_classes": NUM_CLASSES[entry.dataset], "max_length": entry.max_length}


def build_module(entry: ModelEntry) -> tuple[nn.Module, object | None]:
    """The entry's module (seeded by the caller) and its tokenizer: the builder called with the context arguments its
    signature names and the entry's options."""
    builder = import_builder(entry.builder)
    given = context(entry)
    wanted = inspect.signature(builder).parameters
    module = builder(**{k: v for k, v in given.items() if k in wanted}, **entry.options)
    return module, given.get("tokenizer")


def input_shape(entry: ModelEntry) -> tuple[int, ...]:
    """One sample's input: (C, H, W) of the dataset's images, or (max_length,) token ids."""
    if entry.modality == "image":
        return CHANNELS[entry.dataset], data.IMAGE_SIZE, data.IMAGE_SIZE
    return (entry.max_length,)


def _train_mode(model: nn.Module) -> None:
    """Train-mode forward without running statistics: BatchNorm normalises with each batch's own statistics and
    stores nothing (also what `torch.func.vmap` needs)."""
    torch.func.replace_all_batch_norm_modules_(model)
    model.train()


def build_victim(
    arch: str, params: Params, device: torch.device | None = None, trained: bool = False, init: int = 0
) -> Victim:
    """Build model `arch` from params with a seed derived from `study.seed` and the initialisation index `init`;
    `trained`: then trained as `models.<arch>.pretrain` says (the grid's `trained` victim), on the real pretraining
    pool."""
    if arch not in params.models.names:
        raise ValueError(f"unknown model {arch!r}; allowed: {', '.join(params.models.names)}")
    cfg = params.models[arch]
    device = device or resolve_device(params.study.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(params.study.seed, "model", arch, *init_tags(init)))
        model, tokenizer = build_module(cfg)
    model = model.to(device).eval()
    shape = input_shape(cfg)
    victim = Victim(
        arch, model, device, NUM_CLASSES[cfg.dataset], shape, tokenizer, modality=cfg.modality, mode=cfg.mode
    )
    if trained:
        if not cfg.pretrain.epochs:
            raise ValueError(f"a trained {arch} needs models.{arch}.pretrain.epochs > 0")
        seed = derive_seed(params.study.seed, "pretrain", arch, *init_tags(init))
        victim.pretrain_losses = pretrain(victim, cfg.pretrain, seed)
    if cfg.mode == "train":
        _train_mode(victim.model)
    for p in victim.model.parameters():  # nothing data-dependent on the module an attacker is handed
        p.grad = None
    victim.layout  # noqa: B018  (discovered now, never first inside a torch.func transform)
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
    for m in victim.model.modules():  # BatchNorm learns its running statistics; dropout stays off
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
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
    opt.zero_grad(set_to_none=True)
    return losses
