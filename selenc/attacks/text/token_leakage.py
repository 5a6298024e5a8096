"""`token_leakage`: the analytic text attack, no optimisation: everything the embedding gradients give away (`reading`).

The token set comes from the rows with an entry known to be non-zero: a visible non-zero entry (a partly hidden row
counts), or, mask-aware under a support-revealing metric, a hidden entry the mask shows to be non-zero (`reading`);
fully hidden rows the mask does not explain are unknown and not reported. Counts and order are recovered only at
B = 1 with the position rows and the leaked word rows visible (checked by the residual); else the answer is the set,
one copy per token, given to every sample (the set cannot be attributed to samples). With the whole sentence known
and several label candidates left, each candidate's update is compared with the observed one and the closest wins.

Over rounds (`ObservedUpdate.rounds` > 1) each round is read under its own global model and the readings combine: a
token leaked in any round is in the batch (the client's data do not change), and a round that gives the whole
sentence (B = 1, ordered) gives it for all (`info["round"]`; None: the union of the rounds' sets).
"""

from __future__ import annotations

import torch

from selenc.attacks.base import AttackResult, Timer, per_round
from selenc.attacks.text.objective import closest_labels
from selenc.attacks.text.reading import (
    SeenRows,
    label_candidates,
    leakage,
    order_by_positions,
    sequence_length,
    strip,
)
from selenc.models import Victim
from selenc.observed import ObservedUpdate


def token_leakage(
    observed: ObservedUpdate, victim: Victim, cfg=None, threat_model: str = "mask_aware", seed: int = 0
) -> AttackResult:
    """Analytic: the batch's token set from the non-zero token-embedding rows; at B = 1 the full sentence when the
    position decomposition is exact (then also the label, by testing each candidate on the recovered sentence)."""
    if observed.rounds > 1:
        return _over_rounds(observed, victim, cfg, threat_model, seed)
    with Timer() as timer:
        reader = SeenRows(observed, threat_model)
        batch = observed.public.batch_size
        tok = victim.tokenizer
        leak = leakage(observed, victim, threat_model, reader)
        bag = strip(tok, leak.leaked.tolist())
        ordered = order_by_positions(observed, victim, threat_model, leak, reader)
        token_ids = [strip(tok, ordered)] if ordered is not None else [list(bag) for _ in range(batch)]
        length, length_source = sequence_length(observed, victim, threat_model, leak, reader)
        cands, label_source = label_candidates(observed, victim, threat_model, reader)
        labels = cands[0]
        if len(cands) > 1 and ordered is not None:
            labels = closest_labels(observed, victim, threat_model, [ordered], cands)
            label_source += "+exact_tokens"
    return AttackResult(
        labels=torch.tensor(labels),
        token_ids=token_ids,
        texts=[tok.decode(ids) for ids in token_ids],
        seconds=timer.seconds,
        info={
            "threat_model": threat_model,
            "leaked_tokens": len(bag),
            "leaked_ids": bag,
            "from_mask": int(leak.from_mask.numel()),
            "mask_reading": reader.mask_reading,
            "unknown_rows": int(leak.unknown.numel()),
            "ordered": ordered is not None,
            "counts": "exact (B=1 position decomposition)" if ordered is not None else "set only (one copy each)",
            "length": length,
            "length_source": length_source,
            "label_source": label_source,
        },
    )


def _over_rounds(observed: ObservedUpdate, victim: Victim, cfg, threat_model: str, seed: int) -> AttackResult:
    """Every round's reading combined: the first round with the whole sentence, else the union of the token sets (the
    first round's labels)."""
    with Timer() as timer:
        results = per_round(observed, victim, lambda o, v: token_leakage(o, v, cfg, threat_model, seed))
        ordered = [r for r, result in enumerate(results) if result.info["ordered"]]
        if ordered:
            best = results[ordered[0]]
            best.info["round"] = ordered[0]
        else:
            bag = sorted(set().union(*(result.info["leaked_ids"] for result in results)))
            token_ids = [list(bag) for _ in range(observed.public.batch_size)]
            best = results[0]
            best.token_ids, best.texts = token_ids, [victim.tokenizer.decode(ids) for ids in token_ids]
            best.info |= {"round": None, "leaked_tokens": len(bag), "leaked_ids": bag}
        best.info["leaked_per_round"] = [result.info["leaked_tokens"] for result in results]
    best.seconds = timer.seconds
    return best
