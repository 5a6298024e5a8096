"""LAMP-style (Balunović et al. 2022) on a batch of trials: the shared embedding loop (`embedding`) with LAMP's
distance, regulariser, discrete reordering phases and, optionally, a language-model prior.

- Adam on LAMP's per-tensor cosine (`objective.Distance`, `layer_cosine`) + embedding_reg · mean_p (‖x_p‖/ν − 1)²,
  ν the mean norm of the vocabulary embeddings.
- Every `reorder_every` steps a discrete phase (`reorder`) proposes `reorder_candidates` reorderings (swap two
  tokens, move a token, move a span) of one sample's embeddings per row, scores every row's candidates in one
  vectorised pass and keeps a row's best if it beats its current state (as the paper, the continuous embeddings are
  permuted and scored; the decoded tokens of each phase are scored too and the best decoded sentence is kept).
- At the end, `polish` rounds of one reordering of each row's best decoded sentence are scored together, each kept
  when it lowers the row's distance (continuous embeddings can carry a position offset, so permuting them does not
  always move a token; permuting decoded tokens does).
- **Language-model prior** (`lm_weight` > 0): as the paper ranks candidates with a language model's perplexity as well,
every
  candidate in these phases is ranked by its gradient distance + lm_weight × the mean token NLL of its decoded text
  (continuous candidates are projected to tokens first) under SmolLM2-135M (`prior`; no pretrained weights of the
  paper's model exist offline), the texts of a phase scored in one LM call (`prior.nll`); the best decoded sentence, the
  polish and the choice among restarts use the same sum (`info["restart_distances"]` then holds it). lm_weight 0 ranks
  by the gradient distance alone and never loads the model (`info["lm_prior"]`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from selenc.attacks.base import AttackResult, seeded
from selenc.attacks.text.decoding import proposal
from selenc.attacks.text.embedding import EmbeddingAttack, Found, Prior, Search, attack
from selenc.attacks.text.prior import PRIOR_NAME, language_model, nll
from selenc.attacks.text.reading import strip
from selenc.models import Victim


class LAMP(EmbeddingAttack):
    """LAMP's hooks into the shared loop (module docstring)."""

    name = "lamp"
    distance = "layer_cosine"

    @property
    def regulariser(self) -> float:
        return self.cfg.embedding_reg

    def describe(self) -> dict:
        weight = self.cfg.lm_weight
        if weight > 0:
            ranked = f"candidates ranked by gradient distance + {weight} x mean token NLL of their text"
            return {"lm_prior": f"{PRIOR_NAME}: {ranked}"}
        return {"lm_prior": "none (lm_weight 0): candidates ranked by gradient distance alone"}

    def prior(self, victim: Victim) -> Prior | None:
        return language_prior(victim, self.cfg.lm_weight) if self.cfg.lm_weight > 0 else None

    def after_step(self, search: Search, done: int) -> None:
        if done % self.cfg.reorder_every == 0 and done < self.cfg.steps:
            reorder(search, self.cfg.reorder_candidates)

    def finish(self, search: Search, found: Found) -> Found:
        if not self.cfg.polish:
            return found
        rows = search.rows
        gens = [seeded(search.seeds[i], self.name, "polish", r) for i, r in zip(rows.trial, rows.restart, strict=True)]
        return polish(found, self.cfg.polish, search.score_ids, gens)


def lamp_batch(observed, victim, cfg, threat_models, seeds) -> list[AttackResult]:
    """LAMP-style on a batch of trials: per-tensor cosine + embedding-norm regulariser with reordering phases."""
    return attack(observed, victim, threat_models, seeds, LAMP(cfg))


def reorder(search: Search, candidates: int) -> None:
    """LAMP's discrete phase for every row at once: `candidates` reorderings of one sample's embeddings per row, all
    scored in one pass (with the LM `prior`: each one's projection decoded and its text scored too, in one LM call);
    a row's best replaces its state (and Adam moments) if lower. Then every row's projection is scored and kept if it
    is the row's best so far."""
    rows, moves, best, prior = search.rows, search.moves, search.best, search.prior
    score, project, decoded = search.score, search.project, search.decoded
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


def language_prior(victim: Victim, weight: float) -> Callable[[list[torch.Tensor]], torch.Tensor]:
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
