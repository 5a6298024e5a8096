"""The embedding-optimisation loop TAG and LAMP share, run on a batch of independent trials as one vectorised
optimisation over free token embeddings.

`attack(observed, victim, cfg, threat_models, seeds, method) -> [AttackResult]`, where `method` (an
`EmbeddingAttack`: `tag.TAG`, `lamp.LAMP`) says what differs: the gradient distance (`objective.Distance`), a
regulariser on the embeddings, the steps taken between Adam steps and after the last one, and a language-model prior.

Every (trial, restart, label hypothesis) is one row: its dummy sentences are free embeddings of the inner positions
(`decoding.Decoder`), padded to the batch's longest dummy (padding masked out of attention, so a row's update equals
its unpadded one), and each step is one `torch.func.vmap` over the rows of `grad_and_value` of the row's loss (on a
CPU: the same row function one row at a time through plain autograd, `VECTORISE`).

What a trial reads before optimising (`reading`): its sequence length, label candidates and decoding vocabulary.
All B dummies of a trial get its padded length T with full attention (per-sentence lengths at B > 1 are not known; a
shorter sentence's padding is then reconstructed as extra tokens). The tokenizer's frame ([CLS] … [SEP]) is public and
kept fixed. Without a head bias (the built-in decoder) several label multisets remain: each gets its own row from the
same init for PROBE_FRACTION of the steps, then the lowest recent loss continues. When the attacker is blind
(mask-aware, everything hidden) a trial's answer is its prior: the projection of the seeded init (`info["blind"]`).

Adam runs elementwise on the stacked rows (every row its own Adam); lr is in units of the vocabulary embeddings' RMS
(the same cfg value fits the built-in encoder's and decoder's scales), held for the first half of the budget, then
decayed linearly to 0.1x. Each row keeps its best decoded sentence by the method's score (the gradient distance, plus
the prior when on); restarts keep the reconstruction whose score is lowest (`info["restart_distances"]`): what the
attacker measures, never the ground truth. `seconds` is the batch's wall time shared equally among its trials.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from selenc.attacks.base import AttackResult, Timer, seeded
from selenc.attacks.text.decoding import Decoder, vocabulary
from selenc.attacks.text.objective import Distance
from selenc.attacks.text.reading import (
    Leakage,
    SeenRows,
    frame,
    label_candidates,
    leakage,
    sequence_length,
    strip,
)
from selenc.models import Victim
from selenc.observed import ObservedUpdate

PROBE_FRACTION = 0.1  # share of the step budget each label candidate gets before the best one continues
MIN_PROBE_STEPS = 10
HOLD = 0.5  # fraction of the budget at the full learning rate before the linear decay to 0.1x
ROW_BYTES = 2**31  # memory one vectorised call may take on the CPU (a GPU: half its free memory); rows are chunked
BETAS, EPS = (0.9, 0.999), 1e-8  # Adam's defaults (torch.optim.Adam)
TIE = 1e-5  # relative difference under which two restarts' distances tie
# Rows evaluated by one torch.func.vmap call (a GPU) or one by one through plain autograd (a CPU). On the 2-core CPU
# the text models' update is long (MiniLM: ~11M coordinates per row), its elementwise passes dominate a step, and vmap
# gained nothing over one row at a time while torch.func's dispatch layers cost extra (benchmarks/engine.py).
VECTORISE = {"cpu": False, "cuda": True}

Prior = Callable[[list[torch.Tensor]], torch.Tensor]  # candidates' inner ids (B, n) each -> (N,) float64 penalty
Found = list[tuple[float, torch.Tensor]]  # per row: its best score and decoded inner ids (B, n)


class EmbeddingAttack:
    """What one embedding-optimisation attack puts into the shared loop; the defaults are a plain gradient match.

    Subclasses set `name` (it seeds the inits and moves) and `distance` (an `objective.DISTANCES` kind) and override
    the hooks they need."""

    name: str
    distance: str

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def alpha(self) -> float:
        """The L1 weight of the `l2_l1` distance."""
        return 0.0

    @property
    def regulariser(self) -> float:
        """Weight of the embedding-norm regulariser mean_p (‖x_p‖/ν − 1)² added to each row's loss (ν: the
        vocabulary embeddings' mean norm); 0: none."""
        return 0.0

    def describe(self) -> dict:
        """Facts this attack adds to every trial's `info`."""
        return {}

    def prior(self, victim: Victim) -> Prior | None:
        """A penalty added to every candidate's score (a language model's), or None."""
        return None

    def after_step(self, search: Search, done: int) -> None:
        """Runs after Adam step `done` (1-based) of every row, before the label probe is decided."""

    def finish(self, search: Search, found: Found) -> Found:
        """Each row's best (score, ids) after the last step, refined as the attack does (default: unchanged)."""
        return found


def _lr_factor(frac: float) -> float:
    """Full rate for the first HOLD of the budget, then a linear decay to 0.1x."""
    return 1.0 if frac < HOLD else 1.0 - 0.9 * (frac - HOLD) / (1.0 - HOLD)


@dataclass
class Reading:
    """What one trial reads off the server's view before optimising."""

    decoder: Decoder
    labels: list[tuple[int, ...]]
    info: dict


def read(observed: ObservedUpdate, victim: Victim, threat_model: str, method: EmbeddingAttack) -> Reading:
    """A trial's decoder (length, vocabulary), label candidates and the `info` facts they came from. Over rounds
    (the same batch in every message) the rounds' readings combine: the token sets unite (`Leakage.unite`), a length
    pinned by some round's position rows wins (else the longest lower bound), and the label multisets every round
    allows are kept (else the fewest any round allows)."""
    cfg = method.cfg
    views = [observed.round(r) for r in range(observed.rounds)]
    readers = [SeenRows(o, threat_model) for o in views]
    leaks = [leakage(o, victim, threat_model, r) for o, r in zip(views, readers, strict=True)]
    leak = Leakage.unite(leaks) if len(leaks) > 1 else leaks[0]
    lengths = [sequence_length(o, victim, threat_model, lk, r) for o, lk, r in zip(views, leaks, readers, strict=True)]
    pinned = [x for x in lengths if x[1] == "position_rows"]
    length, length_source = pinned[0] if pinned else max(lengths, key=lambda x: x[0])
    per_round = [label_candidates(o, victim, threat_model, r) for o, r in zip(views, readers, strict=True)]
    cands, label_source = min(per_round, key=lambda x: len(x[0]))
    common = [c for c in cands if all(c in other for other, _ in per_round)]
    cands = common or cands
    reader = readers[0]
    allowed, required, vocab_source = vocabulary(leak, victim.tokenizer, cfg.restrict_vocab)
    info = {
        "method": method.name,
        "threat_model": threat_model,
        "length": length,
        "length_source": length_source,
        "vocab": vocab_source,
        "vocab_size": int(allowed.numel()) if allowed is not None else int(leak.vocab_size),
        "leaked_tokens": int(leak.leaked.numel()),
        "from_mask": int(leak.from_mask.numel()),
        "mask_reading": reader.mask_reading,
        "label_candidates": len(cands),
        "label_source": label_source,
        "steps": cfg.steps,
        "restarts": cfg.restarts,
    } | method.describe()
    decoder = Decoder(victim, observed.public.batch_size, length, allowed, required)
    return Reading(decoder, cands, info)


class Rows:
    """The rows of a batched optimisation, padded to the longest dummy: inner embeddings x (R, B, P, E) with their
    Adam moments, and per row its trial, restart, label hypothesis, position order, attention mask and real slots."""

    def __init__(
        self,
        victim: Victim,
        distance: Distance,
        readings: list[Reading],
        specs: list[tuple[int, int, int]],
        inits: list[torch.Tensor],
    ):
        device = victim.device
        self.distance, self._all = distance, None
        prefix, suffix = frame(victim.tokenizer)
        self.n_pre, self.n_suf = len(prefix), len(suffix)
        decoders = [readings[i].decoder for i, _, _ in specs]
        self.width = max(d.n_free for d in decoders)
        batch = decoders[0].batch
        total = self.n_pre + self.width + self.n_suf
        self.trial = [i for i, _, _ in specs]
        self.restart = [r for _, r, _ in specs]
        self.candidate = [c for _, _, c in specs]
        self.n_free = [d.n_free for d in decoders]
        self.x = torch.zeros(len(specs), batch, self.width, decoders[0].table.shape[1], device=device)
        orders, masks = [], []
        for k, (n, x0) in enumerate(zip(self.n_free, inits, strict=True)):
            self.x[k, :, :n] = x0
            pre, inner = list(range(self.n_pre)), list(range(self.n_pre, self.n_pre + n))
            suf = list(range(self.n_pre + self.width, total))
            orders.append(pre + inner + suf + list(range(self.n_pre + n, self.n_pre + self.width)))
            masks.append([1] * (self.n_pre + n + self.n_suf) + [0] * (self.width - n))
        self.order = torch.tensor(orders, device=device)
        self.mask = torch.tensor(masks, device=device)[:, None, :].expand(-1, batch, -1).contiguous()
        self.real = torch.arange(self.width, device=device)[None] < torch.tensor(self.n_free, device=device)[:, None]
        self.labels = torch.tensor([readings[i].labels[c] for i, _, c in specs], dtype=torch.long, device=device)
        self.trial_index = torch.tensor(self.trial, device=device)
        self.m = torch.zeros_like(self.x)
        self.v = torch.zeros_like(self.x)
        self.losses: list[list[float]] = [[] for _ in specs]

    def __len__(self) -> int:
        return len(self.trial)

    def keep(self, rows: list[int]) -> None:
        """Drop every row not in `rows` (label hypotheses that lost their probe)."""
        idx = torch.tensor(rows, device=self.x.device)
        for name in ("x", "m", "v", "order", "mask", "real", "labels", "trial_index"):
            setattr(self, name, getattr(self, name).index_select(0, idx))
        for name in ("trial", "restart", "candidate", "n_free", "losses"):
            setattr(self, name, [getattr(self, name)[r] for r in rows])
        self._all = None

    def args(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-row inputs of the row function besides x, for rows `idx`."""
        own = tuple(t.index_select(0, idx) for t in (self.order, self.mask, self.labels, self.real))
        return own + self.distance.rows(self.trial_index.index_select(0, idx))

    def chunks(self, size: int) -> list[tuple[slice, tuple[torch.Tensor, ...]]]:
        """The rows in vectorised calls of `size`: (rows, their `args`); kept between prunes when one call holds
        them all, else gathered per call (per-row targets are long: memory stays within one call's)."""
        if self._all is not None:
            return self._all
        out = [
            (slice(a, a + size), self.args(torch.arange(a, min(a + size, len(self)), device=self.x.device)))
            for a in range(0, len(self), size)
        ]
        if len(out) == 1:
            self._all = out
        return out

    def pad(self, k: int, inner: torch.Tensor) -> torch.Tensor:
        """Row k's (B, n_free, E) embeddings padded to (B, P, E)."""
        out = torch.zeros_like(self.x[k])
        out[:, : self.n_free[k]] = inner
        return out


def attack(
    observed: list[ObservedUpdate],
    victim: Victim,
    threat_models: list[str],
    seeds: list[int],
    method: EmbeddingAttack,
) -> list[AttackResult]:
    """`method` on a batch of trials: one result per trial, its best restart by the method's own score."""
    if not (len(observed) == len(threat_models) == len(seeds)) or not observed:
        raise ValueError("a batch needs one observed update, threat model and seed per trial, and at least one trial")
    name, cfg = method.name, method.cfg
    with Timer() as timer:
        distance = Distance(observed, victim, threat_models, method.distance, method.alpha)
        readings = [read(o, victim, tm, method) for o, tm in zip(observed, threat_models, strict=True)]
        results: dict[int, AttackResult] = {}
        specs, inits = [], []
        for i, (reading, seed) in enumerate(zip(readings, seeds, strict=True)):
            if distance.blind[i]:  # nothing to match: the prior is the answer
                x0 = reading.decoder.init(seeded(seed, name, "init", 0))
                results[i] = _result(victim, reading.decoder.project(x0), reading.labels[0], [], reading.info)
                results[i].info["blind"] = True
                continue
            for restart in range(cfg.restarts):
                x0 = reading.decoder.init(seeded(seed, name, "init", restart))
                for c in range(len(reading.labels)):  # every label hypothesis from the same init
                    specs.append((i, restart, c))
                    inits.append(x0)
        if specs:
            search = Search(distance, readings, Rows(victim, distance, readings, specs, inits), victim, seeds, method)
            results |= search.run()
    for result in results.values():
        result.seconds = timer.seconds / len(observed)
        result.info["batch"] = len(observed)
    return [results[i] for i in range(len(observed))]


class Search:
    """One batch's optimisation: the rows, how a candidate is scored, decoded and projected, and each row's best
    decoded sentence so far (`best`); `run` is the loop, `method`'s hooks read and change this state."""

    def __init__(
        self,
        distance: Distance,
        readings: list[Reading],
        rows: Rows,
        victim: Victim,
        seeds: list[int],
        method: EmbeddingAttack,
    ):
        self.distance, self.readings, self.rows, self.victim, self.seeds, self.method = (
            distance,
            readings,
            rows,
            victim,
            seeds,
            method,
        )
        decoder0 = readings[0].decoder
        self.prefix, self.suffix = (
            decoder0.table[torch.tensor(ids, dtype=torch.long, device=victim.device)] for ids in frame(victim.tokenizer)
        )
        self.typical = decoder0.typical_norm
        self.eager = not VECTORISE[victim.device.type]
        # update, targets, grads (per round); activations
        per_row = 12 * 4 * distance.target[0].numel() + 4 * rows.x[0].numel() * 64 * distance.rounds
        self.chunk = _chunk(per_row, len(rows), victim.device)
        if self.eager:  # the same row functions, one row at a time through plain autograd, each at its own length
            self.step = _row_by_row(_unpadded(self.loss_row), grad=True)
            self.scorer = _row_by_row(_unpadded(self.score_row), grad=False)
        else:
            self.step = torch.func.vmap(torch.func.grad_and_value(self.loss_row))
            self.scorer = torch.func.vmap(self.score_row)
        self.prior = method.prior(victim)
        specs = zip(rows.trial, rows.restart, rows.candidate, strict=True)
        self.moves = [seeded(seeds[i], method.name, "moves", r, c) for i, r, c in specs]
        self.best: list[tuple[float, torch.Tensor] | None] = [None] * len(rows)  # each row's best decoded (score, ids)

    # --- one row's functions (vmapped over rows, or run row by row) -------------------------------------------
    def embeds(self, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        full = torch.cat([self.prefix.expand(b, -1, -1), x, self.suffix.expand(b, -1, -1)], 1)
        return full.index_select(1, order)

    def score_row(self, x, order, mask, labels, real, *targets) -> torch.Tensor:
        return self.distance.value(self.embeds(x, order), labels, mask, *targets, eager=self.eager)

    def loss_row(self, x, order, mask, labels, real, *targets) -> torch.Tensor:
        value = self.score_row(x, order, mask, labels, real, *targets)
        reg = self.method.regulariser
        if reg:
            norms = x.norm(dim=-1) / self.typical  # (B, P)
            value = value + reg * ((norms - 1).square() * real).sum() / (real.sum() * x.shape[0])
        return value

    # --- candidates ---------------------------------------------------------------------------------------------
    def score(self, xs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Distances of candidate embeddings xs (N, B, P, E), candidate j belonging to row idx[j], in chunks."""
        chunk, rows = self.chunk, self.rows
        with torch.no_grad():
            out = [self.scorer(xs[a : a + chunk], *rows.args(idx[a : a + chunk])) for a in range(0, len(idx), chunk)]
        return torch.cat(out).double().cpu()

    def decoded(self, k: int, ids: torch.Tensor) -> torch.Tensor:
        """Row k's embeddings (B, P, E) of the inner token ids (B, n_free)."""
        return self.rows.pad(k, self.readings[self.rows.trial[k]].decoder.embed(ids))

    def project(self, k: int, x: torch.Tensor | None = None) -> torch.Tensor:
        """Row k's decoded inner ids (B, n_free): of its state, or of embeddings x (B, P, E) in its place."""
        x = self.rows.x[k] if x is None else x
        return self.readings[self.rows.trial[k]].decoder.project(x[:, : self.rows.n_free[k]])

    def with_prior(self, values: torch.Tensor, ids: list[torch.Tensor]) -> torch.Tensor:
        """Scores plus the prior's penalty of the candidates' ids, when the method has a prior."""
        return values if self.prior is None else values + self.prior(ids)

    def score_ids(self, members: list[int], ids: list[torch.Tensor]) -> torch.Tensor:
        """The scores (distance + prior) of decoded ids, ids[j] in the place of row members[j]."""
        xs = torch.stack([self.decoded(k, i) for k, i in zip(members, ids, strict=True)])
        return self.with_prior(self.score(xs, torch.tensor(members, device=xs.device)), ids)

    # --- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> dict[int, AttackResult]:
        rows, readings, cfg = self.rows, self.readings, self.method.cfg
        probing = any(len(r.labels) > 1 for r in readings)
        probe = min(cfg.steps, max(MIN_PROBE_STEPS, int(PROBE_FRACTION * cfg.steps)))
        lr = cfg.lr * readings[0].decoder.rms
        for t in range(cfg.steps):
            pieces = [self.step(rows.x[part], *args) for part, args in rows.chunks(self.chunk)]
            grad, value = (torch.cat(p) for p in zip(*pieces, strict=True))
            rows.m.mul_(BETAS[0]).add_(grad, alpha=1 - BETAS[0])
            rows.v.mul_(BETAS[1]).addcmul_(grad, grad, value=1 - BETAS[1])
            bias1, bias2 = 1 - BETAS[0] ** (t + 1), 1 - BETAS[1] ** (t + 1)
            denom = (rows.v.sqrt() / bias2**0.5).add_(EPS)
            rows.x.addcdiv_(rows.m, denom, value=-lr * _lr_factor(t / cfg.steps) / bias1)
            for k, v in enumerate(value.tolist()):
                rows.losses[k].append(v)
            done = t + 1
            self.method.after_step(self, done)
            if probing and done == probe:
                keep, tails = _probe(rows)
                for (i, _), losses in tails.items():
                    readings[i].info.setdefault("label_probe_losses", []).append(losses)
                self.best = [self.best[k] for k in keep]
                self.moves = [self.moves[k] for k in keep]
                rows.keep(keep)
        ids = [self.project(k) for k in range(len(rows))]
        values = self.score(torch.stack([self.decoded(k, ids[k]) for k in range(len(rows))]), torch.arange(len(rows)))
        values = self.with_prior(values, ids)
        found = []
        for k in range(len(rows)):
            found.append((float(values[k]), ids[k]))
            if self.best[k] is not None and self.best[k][0] < found[k][0]:
                found[k] = self.best[k]
        found = self.method.finish(self, found)
        return self._winners(found)

    def _winners(self, found: Found) -> dict[int, AttackResult]:
        """Per trial, its restart with the lowest score (the first within round-off of it)."""
        rows, out = self.rows, {}
        for i, reading in enumerate(self.readings):
            members = [k for k in range(len(rows)) if rows.trial[k] == i]
            if not members:
                continue
            members.sort(key=lambda k: rows.restart[k])
            lowest = min(found[k][0] for k in members)
            # the first restart within round-off of the lowest wins: restarts that decode alike tie, and which of them
            # is lower by a float's last bits depends on what else shares the vectorised call
            win = next(k for k in members if found[k][0] <= lowest + TIE * abs(lowest))
            labels = reading.labels[rows.candidate[win]]
            out[i] = _result(self.victim, found[win][1], labels, rows.losses[win], reading.info)
            out[i].info["restart_distances"] = [found[k][0] for k in members]
        return out


def _result(victim: Victim, inner_ids: torch.Tensor, labels, losses: list[float], info: dict) -> AttackResult:
    tok = victim.tokenizer
    token_ids = [strip(tok, row) for row in inner_ids.tolist()]
    return AttackResult(
        labels=torch.tensor(labels),
        token_ids=token_ids,
        texts=[tok.decode(ids) for ids in token_ids],
        losses=list(losses),
        info=dict(info),
    )


def _unpadded(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`fn(x, order, mask, ...)` on one row without its padding positions (masked out, so the value is the same; a
    padded position costs as much as a real one when rows are evaluated one at a time)."""

    def row(x: torch.Tensor, order: torch.Tensor, mask: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        length = int(mask[0].sum())
        return fn(x, order[:length], mask[:, :length], *rest)

    return row


def _row_by_row(fn: Callable[..., torch.Tensor], grad: bool) -> Callable[..., torch.Tensor]:
    """`fn` over the leading (row) dimension of its arguments in a Python loop: (gradients in x, values) like
    `vmap(grad_and_value(fn))` when `grad`, else the values like `vmap(fn)`."""

    def rows(x: torch.Tensor, *args: torch.Tensor):
        grads, values = [], []
        for k in range(x.shape[0]):
            xk = x[k].detach().requires_grad_(grad)
            value = fn(xk, *(a[k] for a in args))
            if grad:
                grads.append(torch.autograd.grad(value, xk)[0])
            values.append(value.detach())
        return (torch.stack(grads), torch.stack(values)) if grad else torch.stack(values)

    return rows


def _chunk(per_row: int, rows: int, device: torch.device) -> int:
    """Rows per vectorised call: what fits in ROW_BYTES on the CPU, or in half the free memory of a GPU."""
    budget = torch.cuda.mem_get_info(device)[0] // 2 if device.type == "cuda" else ROW_BYTES
    return max(1, min(rows, budget // per_row))


def _probe(rows: Rows) -> tuple[list[int], dict[tuple[int, int], list[float]]]:
    """After the probe steps: per (trial, restart) the label hypothesis with the lowest mean of its last 5 losses."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, key in enumerate(zip(rows.trial, rows.restart, strict=True)):
        groups.setdefault(key, []).append(k)
    keep, tails = [], {}
    for key, members in groups.items():
        tail = [sum(rows.losses[k][-5:]) / len(rows.losses[k][-5:]) for k in members]
        keep.append(members[tail.index(min(tail))])
        if len(members) > 1:
            tails[key] = tail
    return sorted(keep), tails
