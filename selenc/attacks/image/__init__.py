"""Image gradient inversion attacks, one per module, each run on a batch of independent trials as one vectorised
optimisation (`VECTORISED[name](observed, victim, cfg, threat_models, seeds) -> [AttackResult]`):

- `dlg` (Zhu et al., 2019): L-BFGS over dummy images and soft labels jointly;
- `idlg` (Zhao et al., 2020): analytic labels (`labels`), then DLG's L-BFGS;
- `ig` (Geiping et al., 2020): cosine + TV, signed Adam (`adam`) with step decay, box [0, 1];
- `linear`: the last layer's input features read from its gradient rows, then the image matched to them.

What they share is in `matching` (the seeded prior, the objectives, a batch's runs and how the winner is picked) and
`labels` (labels read from the last layer). An attack reads the server's view only: the visible values and the mask
(`ObservedUpdate`), the public facts, the visible last-layer rows (`observed.rows`) and the model the server
distributed. The client's batch never reaches it.

Every attack starts from seeded uniform noise in [0, 1] (`matching.random_images`); restarts draw fresh seeded inits,
and a list-valued knob (IG's `tv`, linear's `match`) runs one configuration per value from each init, all as rows of
the same batch. Per trial the candidate whose update lies closest to the observed one wins
(`matching.observed_distance`, computed from the server's view alone; `info["restart_losses"]` holds every
candidate's, `info["config"]` the winner's configuration). `losses` holds the winner's objective after every
iteration.

**Visible zeros and the mask** (mask-aware). When every visible value is 0 but the mask shows hidden coordinates to be
non-zero (`base.mask_boundary`: a support-revealing metric whose budget exceeded the update's support, e.g. magnitude
at ρ ≥ 0.5 on the built-in ReLU conv net), the update still carries its support: which units were active. Those trials
match it instead (`info["objective"] = "support"`): the share of the dummy update's energy on coordinates seen to be
zero, Σ_visible g² / (Σ_visible g² + Σ_known g²), scale-free and 0 exactly when the dummy's support matches; DLG and
iDLG minimise it alone, IG adds its TV term. An attack with nothing to match returns its prior, the seeded init of
restart 0 and its prior labels, with `info["blind"] = True` and no losses, rather than optimise a constant: the
mask-aware attacker with every coordinate encrypted, or with only zeros visible and no support to read (IG's cosine
with a zero target is undefined), and zero_fill IG on an all-zero view. `seconds` is the batch's wall time shared
equally among its trials; `info["batch"]` says how many there were. Same seeds, same result (on the same device and
thread count), whatever else shares the batch, up to float round-off.
"""

from collections.abc import Callable

from selenc.attacks.base import AttackResult
from selenc.attacks.image.dlg import dlg_batch
from selenc.attacks.image.idlg import idlg_batch
from selenc.attacks.image.ig import ig_batch
from selenc.attacks.image.linear import linear_batch

VECTORISED: dict[str, Callable[..., list[AttackResult]]] = {
    "dlg": dlg_batch,
    "idlg": idlg_batch,
    "ig": ig_batch,
    "linear": linear_batch,
}
ANALYTIC: dict[str, Callable[..., AttackResult]] = {}  # one trial at a time; the image attacks all optimise
# The optimisation budget of each attack's original procedure (iterations, one restart), against which the study's
# budgets (`attacks.image.<name>.steps`) are stated: DLG ran 300 L-BFGS steps of up to 20 iterations (iDLG the same);
# Inverting Gradients 24,000 signed-Adam iterations. The linear-layer inversion's features are analytic; its image
# search has no published budget (None).
PUBLISHED_STEPS: dict[str, int | None] = {"dlg": 6000, "idlg": 6000, "ig": 24000, "linear": None}
__all__ = ["ANALYTIC", "VECTORISED"]
