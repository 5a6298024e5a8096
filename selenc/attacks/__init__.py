"""Gradient inversion attacks: name -> function, all with one signature.

`attack(observed: ObservedUpdate, victim: Victim, cfg, threat_model: str, seed: int) -> AttackResult`, where cfg is
the attack's section of `params.attacks` (None for the analytic `token_leakage`). See `base` for the threat models.
"""

from selenc.attacks import image, text
from selenc.attacks.base import AttackResult, Matcher
from selenc.config import ATTACK_MODALITY

ATTACKS = image.ATTACKS | text.ATTACKS

if set(ATTACKS) != set(ATTACK_MODALITY):  # a registry out of step with the names params accept is a bug
    raise ImportError(f"attack registry {sorted(ATTACKS)} differs from config names {sorted(ATTACK_MODALITY)}")

__all__ = ["ATTACKS", "AttackResult", "Matcher"]
