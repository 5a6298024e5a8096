"""Gradient inversion attacks: name -> function, in two forms.

- `ATTACKS[name](observed, victim, cfg, threat_model, seed) -> AttackResult`: one trial.
- `BATCHED[name](observed_list, victim, cfg, threat_models, seeds) -> [AttackResult]`: a batch of independent trials
  (one model). The optimisation attacks (`VECTORISED`: DLG, iDLG, IG in `image`; the linear-layer inversion in
  `linear`; TAG, LAMP in `text`) run a batch as one vectorised optimisation; the analytic `token_leakage` and `dager`
  run their trials one after another.

cfg is the attack's section of `params.attacks` (None for the analytic `token_leakage` and `dager`). See `base` for the
threat models.
"""

from selenc.attacks import image, linear, text
from selenc.attacks.base import AttackResult, Matcher, one_by_one
from selenc.config import ATTACK_MODALITY

ATTACKS = image.ATTACKS | linear.ATTACKS | text.ATTACKS
VECTORISED = frozenset(image.BATCHED) | frozenset(linear.BATCHED) | frozenset(text.BATCHED)
BATCHED = (
    image.BATCHED
    | linear.BATCHED
    | text.BATCHED
    | {name: one_by_one(ATTACKS[name]) for name in ATTACKS if name not in VECTORISED}
)

if not set(ATTACKS) == set(BATCHED) == set(ATTACK_MODALITY):  # a registry out of step with the params' names is a bug
    raise ImportError(f"attack registry {sorted(ATTACKS)} differs from config names {sorted(ATTACK_MODALITY)}")

__all__ = ["ATTACKS", "BATCHED", "VECTORISED", "AttackResult", "Matcher"]
