"""Gradient inversion attacks: name -> function, in two forms.

- `ATTACKS[name](observed, victim, cfg, threat_model, seed) -> AttackResult`: one trial.
- `BATCHED[name](observed_list, victim, cfg, threat_models, seeds) -> [AttackResult]`: a batch of independent trials
  (one model). The image attacks run a batch as one vectorised optimisation (`image`); the text attacks do not batch
  yet and run their trials one after another (`VECTORISED` names the ones that do).

cfg is the attack's section of `params.attacks` (None for the analytic `token_leakage`). See `base` for the threat
models.
"""

from collections.abc import Callable

from selenc.attacks import image, text
from selenc.attacks.base import AttackResult, Matcher
from selenc.config import ATTACK_MODALITY


def _one_by_one(attack: Callable[..., AttackResult]) -> Callable[..., list[AttackResult]]:
    def batched(observed, victim, cfg, threat_models, seeds) -> list[AttackResult]:
        return [attack(o, victim, cfg, tm, s) for o, tm, s in zip(observed, threat_models, seeds, strict=True)]

    return batched


ATTACKS = image.ATTACKS | text.ATTACKS
VECTORISED = frozenset(image.BATCHED)
BATCHED = image.BATCHED | {name: _one_by_one(fn) for name, fn in text.ATTACKS.items()}

if not set(ATTACKS) == set(BATCHED) == set(ATTACK_MODALITY):  # a registry out of step with the params' names is a bug
    raise ImportError(f"attack registry {sorted(ATTACKS)} differs from config names {sorted(ATTACK_MODALITY)}")

__all__ = ["ATTACKS", "BATCHED", "VECTORISED", "AttackResult", "Matcher"]
