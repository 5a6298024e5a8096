"""iDLG (Zhao et al., 2020) on a batch of trials: labels read analytically from each trial's visible last layer
(`labels.recover_labels`), then DLG's L-BFGS (`dlg.lbfgs_inversion`) with the labels fixed."""

from __future__ import annotations

from selenc.attacks.base import AttackResult
from selenc.attacks.image.dlg import lbfgs_inversion


def idlg_batch(observed, victim, cfg, threat_models, seeds) -> list[AttackResult]:
    """iDLG on a batch of trials: analytic labels from each trial's visible last layer, then L-BFGS on the images."""
    return lbfgs_inversion(observed, victim, cfg, threat_models, seeds, "idlg", ["analytic"])
