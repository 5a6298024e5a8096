"""The study's grid for one architecture: metric × ratio × attack × threat model × mask source × ties × victim ×
client update × model initialisation × sample, as a main cross product plus optional slices (further cross products,
e.g. zero-fill on a few metrics).

A `Trial` is one grid point; `expand` lists an architecture's grid from params in a fixed order (the order of the
results table). At ρ = 0 and ρ = 1 the mask does not depend on the metric, the mask source or the ties, and at
ρ = 0 both threat models see the same update: such trials are the same computation (`Trial.identity`), run once and
shared.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, fields

from selenc.settings import Params, Update

# a trial's client update, as `update_fields` lists it: the columns of the results table that name it
UPDATE = ("update_kind", "batch_size", "local_steps", "local_lr", "rounds", "mask_policy", "clients", "server_lr")


def update_fields(update: Update) -> tuple[str, int, int, float, int, str, int, float]:
    """A client update as a trial's `UPDATE` fields. Settings an update ignores take placeholders, so they never split
    a grid point: FedSGD takes no local step (0, 0.0); one round has no mask policy, federation or global step
    ("fresh", 1, 0.0)."""
    steps, lr = (0, 0.0) if update.kind == "fedsgd" else (update.local_steps, update.local_lr)
    federation = ("fresh", 1, 0.0) if update.rounds == 1 else (update.mask_policy, update.clients, update.server_lr)
    return update.kind, update.batch_size, steps, lr, update.rounds, *federation


def update_label(
    kind: str,
    batch_size: int,
    local_steps: int,
    local_lr: float,
    rounds: int = 1,
    mask_policy: str = "fresh",
    clients: int = 1,
    server_lr: float = 0.0,
) -> str:
    """A trial's `UPDATE` fields as a short label: 'fedsgd B=1', 'fedavg B=4 3x0.1' (local steps x learning rate),
    'fedsgd B=1 R=4 frozen' (rounds and mask policy; the federation's clients and global step are the run's)."""
    label = f"{kind} B={batch_size}" + (f" {local_steps}x{local_lr:g}" if kind == "fedavg" else "")
    return label + (f" R={rounds} {mask_policy}" if rounds > 1 else "")


def effective_metric(metric: str, ratio: float) -> str:
    """The metric a mask at `ratio` depends on: none at ρ = 0 (nothing encrypted), all at ρ = 1 (everything)."""
    return {0.0: "none", 1.0: "all"}.get(ratio, metric)


@dataclass(frozen=True)
class Trial:
    """One grid point of one architecture's sweep."""

    arch: str
    attack: str
    threat_model: str
    metric: str
    ratio: float
    mask_source: str
    ties: str  # index: equal scores go to the lower flat index | decoys: to client-seeded random ones (`selection`)
    victim: str  # untrained: the seeded init | trained: after `models.<arch>.pretrain` (`models.build_victim`)
    update_kind: str  # the client update (`update_fields`): fedsgd | fedavg
    batch_size: int  # samples in the client's batch
    local_steps: int  # fedavg: local SGD steps (fedsgd: 0)
    local_lr: float  # fedavg: local learning rate (fedsgd: 0.0)
    rounds: int  # messages of one federated run the attacker combines (1: one message)
    mask_policy: str  # how the mask changes across rounds (`settings.MASK_POLICIES`; one round: fresh)
    clients: int  # clients aggregated per round (one round: 1)
    server_lr: float  # the global step between rounds (one round: 0.0)
    init: int  # which model initialisation (0 .. study.model_seeds - 1); (init, trial) is one sample
    trial: int  # which client: its batch holds targets trial, trial + P/B, ... (P targets in the pool, B per batch)

    @property
    def update(self) -> Update:
        """The client update the trial's upload is (FedSGD's unused local settings filled with placeholders)."""
        steps, lr = (self.local_steps, self.local_lr) if self.update_kind == "fedavg" else (1, 1.0)
        clients, server_lr = (self.clients, self.server_lr) if self.rounds > 1 else (1, 1.0)
        return Update(
            kind=self.update_kind,
            batch_size=self.batch_size,
            local_steps=steps,
            local_lr=lr,
            rounds=self.rounds,
            mask_policy=self.mask_policy,
            clients=clients,
            server_lr=server_lr,
        )

    @property
    def effective_metric(self) -> str:
        """At ρ = 0 and ρ = 1 the mask does not depend on the metric: `none` / `all`."""
        return effective_metric(self.metric, self.ratio)

    def identity(self) -> dict:
        """The grid point minus what cannot change its result: trials with equal identities are one computation."""
        out = asdict(self) | {"metric": self.effective_metric}
        if self.ratio in (0.0, 1.0):  # the mask is empty or full whichever clients agreed on it, in every round
            out["mask_source"] = out["ties"] = "any"
            out["mask_policy"] = "any" if self.rounds > 1 else out["mask_policy"]
        if self.ratio == 0.0:  # nothing hidden: the zero-fill and the mask-aware attacker see the same update
            out["threat_model"] = "any"
        return out

    def upload(self) -> str:
        """What the client sends for this trial (`trial.prepare`), as a key: the identity minus the attack and the
        threat model, which only the server's side reads. Trials with equal uploads share their preparation."""
        client_side = {k: v for k, v in self.identity().items() if k not in ("attack", "threat_model")}
        return json.dumps(client_side, sort_keys=True)


if not set(UPDATE) <= {f.name for f in fields(Trial)}:
    raise ImportError(f"grid.UPDATE {UPDATE} names a column that is no Trial field")


def expand(params: Params, arch: str) -> list[Trial]:
    """All trials of `arch`'s grid in a fixed order: the main cross product, then each slice's trials not in it."""
    out: dict[Trial, None] = {}
    for g in params.sweep.grid(arch).products():
        inits = range(params.study.model_seeds)
        updates = [update_fields(u.over(params.update)) for u in g.updates]
        for attack, threat, metric, ratio, source, ties, victim, update, init, t in itertools.product(
            g.attacks,
            g.threat_models,
            g.metrics,
            g.ratios,
            g.mask_sources,
            g.ties,
            g.victims,
            updates,
            inits,
            range(g.trials),
        ):
            out.setdefault(Trial(arch, attack, threat, metric, float(ratio), source, ties, victim, *update, init, t))
    return list(out)


def distinct(trials: list[Trial]) -> list[Trial]:
    """The first trial of every distinct computation (`Trial.identity`), in order."""
    first: dict[str, Trial] = {}
    for t in trials:
        first.setdefault(json.dumps(t.identity(), sort_keys=True), t)
    return list(first.values())
