"""TAG and LAMP, each run on a batch of independent trials as one vectorised optimisation over free token embeddings.

`BATCHED[name](observed, victim, cfg, threat_models, seeds) -> [AttackResult]`. Every (trial, restart, label
hypothesis) is one row: its dummy sentences are free embeddings of the inner positions (`decoding.Decoder`), padded to
the batch's longest dummy (padding masked out of attention, so a row's update equals its unpadded one), and each step
is one `torch.func.vmap` over the rows of `grad_and_value` of the row's gradient distance (`objective.Distance`).

- `tag` (Deng et al. 2021): Adam on ‖Δ‖² + α‖Δ‖₁ between the dummy's and the observed update, Δ over the coordinates
  the threat model compares.
- `lamp` (Balunović et al. 2022, LAMP-style): Adam on LAMP's per-tensor cosine + embedding_reg · mean_p (‖x_p‖/ν −
  1)², ν the mean norm of the vocabulary embeddings; every `reorder_every` steps a discrete phase proposes
  `reorder_candidates` reorderings (swap two tokens, move a token, move a span) of one sample's embeddings per row,
  scores every row's candidates in one vectorised pass and keeps a row's best if it beats its current state (as the
  paper, the continuous embeddings are permuted and scored; the decoded tokens of each phase are scored too and the
  best decoded sentence is kept); at the end, `polish` rounds of one reordering of each row's best decoded sentence
  are scored together, each kept when it lowers the row's distance (continuous embeddings can carry a position
  offset, so permuting them does not always move a token; permuting decoded tokens does). **Language-model prior**
  (`lm_weight` > 0): as the paper ranks candidates with GPT-2's perplexity as well, every candidate in these phases
  is ranked by its gradient distance + lm_weight × the mean token NLL of its decoded text (continuous candidates are
  projected to tokens first) under SmolLM2-135M (`prior`; no pretrained GPT-2 weights exist offline), the texts of a
  phase scored in one LM call (`prior.nll`); the best decoded sentence, the polish and the choice among restarts use the
  same sum (`info["restart_distances"]` then holds it). lm_weight 0 ranks by the gradient distance alone and never
  loads the model (`info["lm_prior"]`).

What a trial reads before optimising (`reading`): its sequence length, label candidates and decoding vocabulary.
All B dummies of a trial get its padded length T with full attention (per-sentence lengths at B > 1 are not known; a
shorter sentence's padding is then reconstructed as extra tokens). The tokenizer's frame ([CLS] … [SEP]) is public and
kept fixed. Without a head bias (GPT-2) several label multisets remain: each gets its own row from the same init for
PROBE_FRACTION of the steps, then the lowest recent loss continues. When the attacker is blind (mask-aware, everything
hidden) a trial's answer is its prior: the projection of the seeded init (`info["blind"]`).

Adam runs elementwise on the stacked rows (every row its own Adam); lr is in units of the vocabulary embeddings' RMS
(the same cfg value fits BERT's and GPT-2's scales), held for the first half of the budget, then decayed linearly to
0.1x. Restarts keep the reconstruction whose discrete gradient distance is lowest. `seconds` is the batch's wall time
shared equally among its trials.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from selenc.attacks.base import AttackResult, Timer
from selenc.attacks.text.decoding import Decoder, proposal, vocabulary
from selenc.attacks.text.objective import Distance
from selenc.attacks.text.prior import PRIOR_NAME, language_model, nll
from selenc.attacks.text.reading import (
    SeenRows,
    frame,
    label_candidates,
    leakage,
    sequence_length,
    strip,
)
from selenc.config import derive_seed
from selenc.models import Victim
from selenc.observed import ObservedUpdate

PROBE_FRACTION = 0.1  # share of the step budget each label candidate gets before the best one continues
MIN_PROBE_STEPS = 10
HOLD = 0.5  # fraction of the budget at the full learning rate before the linear decay to 0.1x
ROW_BYTES = 2**31  # memory one vectorised call may take on the CPU (a GPU: half its free memory); rows are chunked
BETAS, EPS = (0.9, 0.999), 1e-8  # Adam's defaults (torch.optim.Adam)
TIE = 1e-5  # relative difference under which two restarts' distances tie
# Rows evaluated by one torch.func.vmap call (a GPU) or one by one through plain autograd (a CPU). On the 2-core CPU
# the text models' update is long (BERT: ~11M coordinates per row), its elementwise passes dominate a step, and vmap
# gained nothing over one row at a time while torch.func's dispatch layers cost extra (benchmarks/engine.py).
VECTORISE = {"cpu": False, "cuda": True}


def _lr_factor(frac: float) -> float:
    """Full rate for the first HOLD of the budget, then a linear decay to 0.1x."""
    return 1.0 if frac < HOLD else 1.0 - 0.9 * (frac - HOLD) / (1.0 - HOLD)


def _generator(seed: int, *tags: str | int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *tags))


@dataclass
class _Reading:
    """What one trial reads off the server's view before optimising."""

    decoder: Decoder
    labels: list[tuple[int, ...]]
    info: dict


def _read(observed: ObservedUpdate, victim: Victim, cfg, threat_model: str, method: str) -> _Reading:
    reader = SeenRows(observed, threat_model)
    leak = leakage(observed, victim, threat_model, reader)
    length, length_source = sequence_length(observed, victim, threat_model, leak, reader)
    cands, label_source = label_candidates(observed, victim, threat_model, reader)
    allowed, required, vocab_source = vocabulary(leak, victim.tokenizer, cfg.restrict_vocab)
    info = {
        "method": method,
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
    }
    if method == "lamp":
        info["lm_prior"] = (
            f"{PRIOR_NAME}: candidates ranked by gradient distance + {cfg.lm_weight} x mean token NLL of their text"
            if cfg.lm_weight > 0
            else "none (lm_weight 0): candidates ranked by gradient distance alone"
        )
    decoder = Decoder(victim, observed.public.batch_size, length, allowed, required)
    return _Reading(decoder, cands, info)


class _Rows:
    """The rows of a batched optimisation, padded to the longest dummy: inner embeddings x (R, B, P, E) with their
    Adam moments, and per row its trial, restart, label hypothesis, position order, attention mask and real slots."""

    def __init__(
        self,
        victim: Victim,
        distance: Distance,
        readings: list[_Reading],
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


def _attack(
    observed: list[ObservedUpdate], victim: Victim, cfg, threat_models: list[str], seeds: list[int], method: str
) -> list[AttackResult]:
    if not (len(observed) == len(threat_models) == len(seeds)) or not observed:
        raise ValueError("a batch needs one observed update, threat model and seed per trial, and at least one trial")
    with Timer() as timer:
        kind = "l2_l1" if method == "tag" else "layer_cosine"
        distance = Distance(observed, victim, threat_models, kind, getattr(cfg, "alpha", 0.0))
        readings = [_read(o, victim, cfg, tm, method) for o, tm in zip(observed, threat_models, strict=True)]
        results: dict[int, AttackResult] = {}
        specs, inits = [], []
        for i, (reading, seed) in enumerate(zip(readings, seeds, strict=True)):
            if distance.blind[i]:  # nothing to match: the prior is the answer
                x0 = reading.decoder.init(_generator(seed, method, "init", 0))
                results[i] = _result(victim, reading.decoder.project(x0), reading.labels[0], [], reading.info)
                results[i].info["blind"] = True
                continue
            for restart in range(cfg.restarts):
                x0 = reading.decoder.init(_generator(seed, method, "init", restart))
                for c in range(len(reading.labels)):  # every label hypothesis from the same init
                    specs.append((i, restart, c))
                    inits.append(x0)
        if specs:
            results |= _optimise(
                distance, readings, _Rows(victim, distance, readings, specs, inits), victim, cfg, seeds, method
            )
    for result in results.values():
        result.seconds = timer.seconds / len(observed)
        result.info["batch"] = len(observed)
    return [results[i] for i in range(len(observed))]


def _optimise(
    distance: Distance, readings: list[_Reading], rows: _Rows, victim: Victim, cfg, seeds: list[int], method: str
) -> dict[int, AttackResult]:
    decoder0 = readings[0].decoder
    prefix, suffix = (
        decoder0.table[torch.tensor(ids, dtype=torch.long, device=victim.device)] for ids in frame(victim.tokenizer)
    )
    reg = cfg.embedding_reg if method == "lamp" else 0.0
    typical = decoder0.typical_norm

    def embeds(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        full = torch.cat([prefix.expand(b, -1, -1), x, suffix.expand(b, -1, -1)], 1)
        return full.index_select(1, order)

    eager = not VECTORISE[victim.device.type]

    def score_row(x, order, mask, labels, real, *targets) -> torch.Tensor:
        return distance.value(embeds(x, order), labels, mask, *targets, eager=eager)

    def loss_row(x, order, mask, labels, real, *targets) -> torch.Tensor:
        value = score_row(x, order, mask, labels, real, *targets)
        if reg:
            norms = x.norm(dim=-1) / typical  # (B, P)
            value = value + reg * ((norms - 1).square() * real).sum() / (real.sum() * x.shape[0])
        return value

    per_row = 12 * 4 * distance.target.shape[1] + 4 * rows.x[0].numel() * 64  # update, targets, grads; activations
    chunk = _chunk(per_row, len(rows), victim.device)
    if eager:  # the same row functions, one row at a time through plain autograd, each at its own length
        step, scorer = _row_by_row(_unpadded(loss_row), grad=True), _row_by_row(_unpadded(score_row), grad=False)
    else:
        step, scorer = torch.func.vmap(torch.func.grad_and_value(loss_row)), torch.func.vmap(score_row)

    def score(xs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Distances of candidate embeddings xs (N, B, P, E), candidate j belonging to row idx[j], in chunks."""
        with torch.no_grad():
            out = [scorer(xs[a : a + chunk], *rows.args(idx[a : a + chunk])) for a in range(0, len(idx), chunk)]
        return torch.cat(out).double().cpu()

    def decoded(k: int, ids: torch.Tensor) -> torch.Tensor:
        return rows.pad(k, readings[rows.trial[k]].decoder.embed(ids))

    def project(k: int, x: torch.Tensor | None = None) -> torch.Tensor:
        """Row k's decoded inner ids (B, n_free): of its state, or of embeddings x (B, P, E) in its place."""
        x = rows.x[k] if x is None else x
        return readings[rows.trial[k]].decoder.project(x[:, : rows.n_free[k]])

    prior = _prior(victim, cfg.lm_weight) if method == "lamp" and cfg.lm_weight > 0 else None

    def with_prior(values: torch.Tensor, ids: list[torch.Tensor]) -> torch.Tensor:
        return values if prior is None else values + prior(ids)

    specs = zip(rows.trial, rows.restart, rows.candidate, strict=True)
    moves = [_generator(seeds[i], method, "moves", r, c) for i, r, c in specs]
    best: list[tuple[float, torch.Tensor] | None] = [None] * len(rows)  # each row's best decoded (distance, ids)
    probing = any(len(r.labels) > 1 for r in readings)
    probe = min(cfg.steps, max(MIN_PROBE_STEPS, int(PROBE_FRACTION * cfg.steps)))
    lr = cfg.lr * decoder0.rms
    for t in range(cfg.steps):
        pieces = [step(rows.x[part], *args) for part, args in rows.chunks(chunk)]
        grad, value = (torch.cat(p) for p in zip(*pieces, strict=True))
        rows.m.mul_(BETAS[0]).add_(grad, alpha=1 - BETAS[0])
        rows.v.mul_(BETAS[1]).addcmul_(grad, grad, value=1 - BETAS[1])
        bias1, bias2 = 1 - BETAS[0] ** (t + 1), 1 - BETAS[1] ** (t + 1)
        denom = (rows.v.sqrt() / bias2**0.5).add_(EPS)
        rows.x.addcdiv_(rows.m, denom, value=-lr * _lr_factor(t / cfg.steps) / bias1)
        for k, v in enumerate(value.tolist()):
            rows.losses[k].append(v)
        done = t + 1
        if method == "lamp" and done % cfg.reorder_every == 0 and done < cfg.steps:
            _reorder(rows, cfg.reorder_candidates, score, moves, best, project, decoded, prior)
        if probing and done == probe:
            keep, tails = _probe(rows)
            for (i, _), losses in tails.items():
                readings[i].info.setdefault("label_probe_losses", []).append(losses)
            best = [best[k] for k in keep]
            moves = [moves[k] for k in keep]
            rows.keep(keep)
    ids = [project(k) for k in range(len(rows))]
    values = score(torch.stack([decoded(k, ids[k]) for k in range(len(rows))]), torch.arange(len(rows)))
    values = with_prior(values, ids)
    found = []
    for k in range(len(rows)):
        found.append((float(values[k]), ids[k]))
        if best[k] is not None and best[k][0] < found[k][0]:
            found[k] = best[k]
    if method == "lamp" and cfg.polish:
        gens = [_generator(seeds[i], method, "polish", r) for i, r in zip(rows.trial, rows.restart, strict=True)]

        def score_ids(members: list[int], ids: list[torch.Tensor]) -> torch.Tensor:
            xs = torch.stack([decoded(k, i) for k, i in zip(members, ids, strict=True)])
            return with_prior(score(xs, torch.tensor(members, device=xs.device)), ids)

        found = polish(found, cfg.polish, score_ids, gens)
    out: dict[int, AttackResult] = {}
    for i, reading in enumerate(readings):
        members = [k for k in range(len(rows)) if rows.trial[k] == i]
        if not members:
            continue
        members.sort(key=lambda k: rows.restart[k])
        lowest = min(found[k][0] for k in members)
        # the first restart within round-off of the lowest wins: restarts that decode alike tie, and which of them
        # is lower by a float's last bits depends on what else shares the vectorised call
        win = next(k for k in members if found[k][0] <= lowest + TIE * abs(lowest))
        labels = reading.labels[rows.candidate[win]]
        out[i] = _result(victim, found[win][1], labels, rows.losses[win], reading.info)
        out[i].info["restart_distances"] = [found[k][0] for k in members]
    return out


def _prior(victim: Victim, weight: float) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """LAMP's language-model term: candidates' inner ids (B, n) each -> (N,) float64 weight x the mean over the B
    sentences of the LM's mean token NLL of the decoded text; one LM call over the texts not scored before in this
    attack (many candidates decode alike), loading the model on the victim's device on first use."""
    lm, tok = language_model(victim.device), victim.tokenizer
    seen: dict[str, float] = {}

    def prior(candidates: list[torch.Tensor]) -> torch.Tensor:
        texts = [[tok.decode(strip(tok, row)) for row in ids.tolist()] for ids in candidates]
        new = sorted({t for sentences in texts for t in sentences} - seen.keys())
        if new:
            seen.update(zip(new, nll(new, lm).tolist(), strict=True))
        means = [sum(seen[t] for t in sentences) / len(sentences) for sentences in texts]
        return weight * torch.tensor(means, dtype=torch.float64)

    return prior


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


def _probe(rows: _Rows) -> tuple[list[int], dict[tuple[int, int], list[float]]]:
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


def _reorder(
    rows: _Rows, candidates: int, score: Callable, moves, best: list, project, decoded, prior: Callable | None
) -> None:
    """LAMP's discrete phase for every row at once: `candidates` reorderings of one sample's embeddings per row, all
    scored in one pass (with the LM `prior`: each one's projection decoded and its text scored too, in one LM call);
    a row's best replaces its state (and Adam moments) if lower. Then every row's projection is scored and kept if it
    is the row's best so far."""
    n_rows, batch = len(rows), rows.x.shape[1]
    movable = [k for k in range(n_rows) if rows.n_free[k] >= 2]
    variants, owner, moved_by = [rows.x], list(range(n_rows)), [None] * n_rows
    for _ in range(candidates if movable else 0):
        for k in movable:
            sample = int(torch.randint(batch, (1,), generator=moves[k]))
            perm = proposal(rows.n_free[k], moves[k]).to(rows.x.device)
            x = rows.x[k].clone()
            x[sample, : len(perm)] = rows.x[k, sample, perm]
            variants.append(x[None])
            owner.append(k)
            moved_by.append((sample, perm))
    xs = torch.cat(variants)
    values = score(xs, torch.tensor(owner, device=rows.x.device))
    if prior is not None:
        values = values + prior([project(k, x) for k, x in zip(owner, xs, strict=True)])
    lowest = values[:n_rows].clone()
    choice: list[tuple[int, torch.Tensor] | None] = [None] * n_rows
    for j in range(n_rows, len(owner)):
        k = owner[j]
        if values[j] < lowest[k]:
            lowest[k], choice[k] = values[j], moved_by[j]
    with torch.no_grad():
        for k, picked in enumerate(choice):
            if picked is not None:
                sample, perm = picked
                for t in (rows.x, rows.m, rows.v):
                    t[k, sample, : len(perm)] = t[k, sample, perm]
    ids = [project(k) for k in range(n_rows)]
    values = score(torch.stack([decoded(k, ids[k]) for k in range(n_rows)]), torch.arange(n_rows, device=rows.x.device))
    if prior is not None:
        values = values + prior(ids)
    for k in range(n_rows):
        if best[k] is None or float(values[k]) < best[k][0]:
            best[k] = (float(values[k]), ids[k])


def polish(
    found: list[tuple[float, torch.Tensor]],
    steps: int,
    score: Callable[[list[int], list[torch.Tensor]], torch.Tensor],
    gens: list[torch.Generator],
) -> list[tuple[float, torch.Tensor]]:
    """LAMP's discrete search on decoded tokens, every row at once: `steps` rounds of one random reordering (swap two
    tokens, move a token, move a span) of one sample's tokens (B, n) per row, all rows' proposals scored in one call
    `score(rows, ids)` (LAMP's: gradient distance, + the LM prior when on), each kept when it lowers its row's score
    (first-improvement hill climbing)."""
    found = list(found)
    movable = [k for k, (_, ids) in enumerate(found) if ids.shape[1] >= 2]
    for _ in range(steps if movable else 0):
        proposals = []
        for k in movable:
            ids = found[k][1].clone()
            sample = int(torch.randint(ids.shape[0], (1,), generator=gens[k]))
            ids[sample] = ids[sample, proposal(ids.shape[1], gens[k]).to(ids.device)]
            proposals.append(ids)
        values = score(movable, proposals)
        for j, k in enumerate(movable):
            if float(values[j]) < found[k][0]:
                found[k] = (float(values[j]), proposals[j])
    return found


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


def tag_batch(observed, victim, cfg, threat_models, seeds) -> list[AttackResult]:
    """TAG on a batch of trials: Adam on L2 + α·L1 gradient distance over free token embeddings, then decoding."""
    return _attack(observed, victim, cfg, threat_models, seeds, "tag")


def lamp_batch(observed, victim, cfg, threat_models, seeds) -> list[AttackResult]:
    """LAMP-style on a batch of trials: per-tensor cosine + embedding-norm regulariser with reordering phases."""
    return _attack(observed, victim, cfg, threat_models, seeds, "lamp")


BATCHED: dict[str, Callable[..., list[AttackResult]]] = {"tag": tag_batch, "lamp": lamp_batch}
