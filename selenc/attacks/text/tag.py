"""TAG (Deng et al. 2021) on a batch of trials: the shared embedding loop (`embedding`) on Adam over
‖Δ‖² + α‖Δ‖₁ between the dummy's and the observed update (Δ over the coordinates the threat model compares), then
decoding; nothing between or after the steps."""

from __future__ import annotations

from selenc.attacks.base import AttackResult
from selenc.attacks.text.embedding import EmbeddingAttack, attack


class TAG(EmbeddingAttack):
    """TAG's hooks into the shared loop: the L2 + α·L1 distance, nothing else."""

    name = "tag"
    distance = "l2_l1"

    @property
    def alpha(self) -> float:
        return self.cfg.alpha


def tag_batch(observed, victim, cfg, threat_models, seeds) -> list[AttackResult]:
    """TAG on a batch of trials: Adam on L2 + α·L1 gradient distance over free token embeddings, then decoding."""
    return attack(observed, victim, threat_models, seeds, TAG(cfg))
