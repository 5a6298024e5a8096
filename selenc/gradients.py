"""The client's shared update, and the flat coordinate space every later module works in.

`client_update` returns one flat vector: the FedSGD gradient of the batch loss (default) or the FedAvg update
θ_0 − θ_k after k local SGD steps on the batch. `FlatLayout` maps each flat index to (parameter name, position)
and back, in `named_parameters()` order, so masks and scores are plain vectors over the same n coordinates.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from selenc.models import Batch, Victim
from selenc.settings import Update


@dataclass(frozen=True)
class FlatLayout:
    """Named parameter shapes laid end to end: index i lives in `names[k]` with offsets[k] <= i < offsets[k+1]."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # len(names) + 1 entries; offsets[-1] == n

    @classmethod
    def of(cls, model: torch.nn.Module) -> FlatLayout:
        named = [(name, tuple(p.shape)) for name, p in model.named_parameters() if p.requires_grad]
        sizes = [int(np.prod(shape)) for _, shape in named]
        return cls(tuple(n for n, _ in named), tuple(s for _, s in named), tuple(np.cumsum([0, *sizes]).tolist()))

    @property
    def n(self) -> int:
        return self.offsets[-1]

    def span(self, name: str) -> slice:
        """The flat index range of one parameter tensor."""
        k = self._index_of(name)
        return slice(self.offsets[k], self.offsets[k + 1])

    def flatten(self, tensors: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors (by name or in order) into one flat vector."""
        if isinstance(tensors, Mapping):
            missing = [n for n in self.names if n not in tensors]
            if missing:
                raise ValueError(f"flatten: no tensor for parameter {missing[0]!r}")
            tensors = [tensors[n] for n in self.names]
        if len(tensors) != len(self.names):
            raise ValueError(f"flatten: got {len(tensors)} tensors for {len(self.names)} parameters")
        for name, shape, t in zip(self.names, self.shapes, tensors, strict=True):
            if tuple(t.shape) != shape:
                raise ValueError(f"flatten: {name!r} has shape {tuple(t.shape)}, the model's is {shape}")
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector back into named tensors (views, no copy)."""
        if flat.ndim != 1 or flat.numel() != self.n:
            raise ValueError(f"unflatten: expected a 1-D vector of {self.n} values, got shape {tuple(flat.shape)}")
        return {
            name: flat[a:b].view(shape)
            for name, shape, a, b in zip(self.names, self.shapes, self.offsets[:-1], self.offsets[1:], strict=True)
        }

    def parameter_of(self, indices: np.ndarray) -> np.ndarray:
        """For each flat index, the position of its parameter in `names` (vectorised)."""
        indices = np.asarray(indices)
        if indices.size and (indices.min() < 0 or indices.max() >= self.n):
            raise IndexError(f"flat indices must lie in [0, {self.n}), got [{indices.min()}, {indices.max()}]")
        return np.searchsorted(np.asarray(self.offsets), indices, side="right") - 1

    def locate(self, index: int) -> tuple[str, tuple[int, ...]]:
        """Flat index -> (parameter name, position inside the tensor)."""
        k = int(self.parameter_of(np.asarray([index]))[0])
        pos = np.unravel_index(index - self.offsets[k], self.shapes[k])
        return self.names[k], tuple(int(p) for p in pos)

    def index(self, name: str, position: tuple[int, ...]) -> int:
        """(parameter name, position) -> flat index."""
        k = self._index_of(name)
        return self.offsets[k] + int(np.ravel_multi_index(position, self.shapes[k]))

    def _index_of(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no parameter named {name!r} in this layout") from None


def client_update(
    victim: Victim,
    batch: Batch,
    cfg: Update,
    create_graph: bool = False,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The flat update a client shares for `batch`: FedSGD gradient or FedAvg delta θ_0 − θ_k.

    θ_0 is the model's parameters, or `weights` (by name: another round's global model). The model itself is never
    changed. With `create_graph=True` the result stays differentiable with respect to the batch inputs (what
    gradient-matching attacks need).
    """
    named = [(n, p) for n, p in victim.model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    theta0 = [p if weights is None else weights[n].detach().requires_grad_() for n, p in named]
    if cfg.kind == "fedsgd":
        # materialize_grads: a parameter the batch does not reach (the token embedding when the batch holds
        # embeddings instead of ids) gets an all-zero gradient instead of an error
        params = None if weights is None else dict(zip(names, theta0, strict=True))
        loss = victim.loss(batch, params=params)
        grads = torch.autograd.grad(loss, theta0, create_graph=create_graph, materialize_grads=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        return flat if create_graph else flat.detach()
    theta = theta0 if create_graph else [p.detach().requires_grad_() for p in theta0]
    for _ in range(cfg.local_steps):
        loss = victim.loss(batch, params=dict(zip(names, theta, strict=True)))
        grads = torch.autograd.grad(loss, theta, create_graph=create_graph, materialize_grads=True)
        theta = [t - cfg.local_lr * g for t, g in zip(theta, grads, strict=True)]
        if not create_graph:
            theta = [t.detach().requires_grad_() for t in theta]
    flat = torch.cat([(a - b).reshape(-1) for a, b in zip(theta0, theta, strict=True)])
    return flat if create_graph else flat.detach()


def model_weights(victim: Victim) -> torch.Tensor:
    """The model's trainable parameters as one flat vector (`FlatLayout` order), detached."""
    return torch.cat([p.detach().reshape(-1) for p in victim.model.parameters() if p.requires_grad])


def at_weights(victim: Victim, weights: torch.Tensor) -> Victim:
    """A copy of `victim` whose trainable parameters are the flat `weights` (another round's global model)."""
    model = copy.deepcopy(victim.model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p, w in zip(trainable, FlatLayout.of(model).unflatten(weights.to(victim.device)).values(), strict=True):
            p.copy_(w)
    return replace(victim, model=model)


def continuous_input(victim: Victim, batch: Batch) -> torch.Tensor:
    """The batch's point x in the continuous input space: pixels for images, a zero embedding offset for text."""
    if victim.modality == "image":
        return batch.inputs.detach().clone()
    width = victim.model.get_input_embeddings().embedding_dim
    return torch.zeros(*batch.inputs.shape, width, device=batch.inputs.device)


def at_input(victim: Victim, batch: Batch, x: torch.Tensor) -> Batch:
    """The same batch (labels, tokens, mask) moved to input point `x` of `continuous_input`'s space."""
    if victim.modality == "image":
        return Batch(x, batch.labels)
    return Batch(batch.inputs, batch.labels, batch.attention_mask, input_offset=x)


def batch_update(victim: Victim, cfg: Update, names: Sequence[str] | None = None) -> Callable[..., torch.Tensor]:
    """(batch, weights=None) -> the flat update a client with that batch sends, written with torch.func so it composes
    with `jvp`, `grad` and `vmap` (same values as `client_update`; labels may be ids or probabilities). `weights` (a
    flat vector in `FlatLayout` order, vmappable) is the model it starts from: another round's global model; None:
    the model's own parameters.

    `names` restricts the update to those parameters (in that order), the others held at their values: exact for
    FedSGD, and for FedAvg when the left-out parameters' gradient is zero (a token table fed embeddings)."""
    layout = FlatLayout.of(victim.model)
    own = {n: p.detach() for n, p in victim.model.named_parameters() if p.requires_grad}
    names = list(own) if names is None else list(names)
    kept = set(names)

    def loss(theta: dict[str, torch.Tensor], fixed: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return victim.loss(batch, params=theta | fixed)

    def update(batch: Batch, weights: torch.Tensor | None = None) -> torch.Tensor:
        theta0 = own if weights is None else layout.unflatten(weights)
        start = {n: theta0[n] for n in names}
        fixed = {n: p for n, p in theta0.items() if n not in kept}
        if cfg.kind == "fedsgd":
            g = torch.func.grad(loss)(start, fixed, batch)
            return torch.cat([g[n].reshape(-1) for n in names])
        theta = start
        for _ in range(cfg.local_steps):
            g = torch.func.grad(loss)(theta, fixed, batch)
            theta = {n: theta[n] - cfg.local_lr * g[n] for n in names}
        return torch.cat([(start[n] - theta[n]).reshape(-1) for n in names])

    return update


def functional_update(victim: Victim, batch: Batch, cfg: Update) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> the flat update at input point x of `continuous_input`'s space (the batch's labels and tokens kept)."""
    update = batch_update(victim, cfg)
    return lambda x: update(at_input(victim, batch, x))


def update_jvp(
    victim: Victim, batch: Batch, cfg: Update, x: torch.Tensor, directions: list[torch.Tensor]
) -> list[torch.Tensor]:
    """J·u for each direction u, J = ∂g/∂x the Jacobian of the flat update in the input, never materialised.

    Forward-over-reverse (`torch.func.jvp` of the update function): about the cost of one extra backward per
    direction, several times cheaper than a double-VJP on transformers.
    """
    f = functional_update(victim, batch, cfg)
    return [torch.func.jvp(f, (x.detach(),), (u,))[1].detach() for u in directions]
