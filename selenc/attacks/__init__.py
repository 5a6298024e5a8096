"""Gradient inversion attacks: the one declaration of every attack's name and modality, and its two call forms.

Each modality's package declares its attacks (`image`, `text`): `VECTORISED` (name -> a batch of trials attacked as
one vectorised optimisation) and `ANALYTIC` (name -> one trial). From those, here:

- `MODALITY[name]`: "image" or "text", the package the attack sits in (config validates grids against it);
- `BATCHED[name](observed_list, victim, cfg, threat_models, seeds) -> [AttackResult]`: a batch of independent trials
  (one model); an analytic attack runs its trials one after another;
- `ATTACKS[name](observed, victim, cfg, threat_model, seed) -> AttackResult`: one trial;
- `NEEDS[name]`: (what, check) for an attack that reads a part not every model has: `config` refuses it on a model
  whose `Victim` fails the check, naming what is missing;
- `PUBLISHED_STEPS[name]`: the optimisation budget of the original procedure (None: analytic, or none published), so
  that findings can state how the study's budgets compare.

cfg is the attack's knobs (`settings.Attacks.of(name)`: None for the analytic `token_leakage` and `dager`). See
`base` for the threat models. Every attack takes a multi-round view (`ObservedUpdate.rounds` > 1) too: one candidate
matched against every round under its own global model (optimisation attacks), or the rounds' readings combined
(analytic ones).
"""

from collections.abc import Callable

from selenc.attacks import image, text
from selenc.attacks.base import AttackResult, Matcher, one_by_one, one_trial
from selenc.models import Victim

_PACKAGES = {"image": image, "text": text}

MODALITY: dict[str, str] = {
    name: modality for modality, pkg in _PACKAGES.items() for name in [*pkg.VECTORISED, *pkg.ANALYTIC]
}
VECTORISED = frozenset(name for pkg in _PACKAGES.values() for name in pkg.VECTORISED)
BATCHED: dict[str, Callable[..., list[AttackResult]]] = {
    name: fn for pkg in _PACKAGES.values() for name, fn in pkg.VECTORISED.items()
} | {name: one_by_one(fn) for pkg in _PACKAGES.values() for name, fn in pkg.ANALYTIC.items()}
PUBLISHED_STEPS: dict[str, int | None] = image.PUBLISHED_STEPS | text.PUBLISHED_STEPS  # the originals' budgets
ATTACKS: dict[str, Callable[..., AttackResult]] = {
    name: one_trial(fn) for pkg in _PACKAGES.values() for name, fn in pkg.VECTORISED.items()
} | {name: fn for pkg in _PACKAGES.values() for name, fn in pkg.ANALYTIC.items()}


def _class_rows(victim: Victim) -> bool:
    return any(p.ndim == 2 and p.shape[0] == victim.num_classes for p in victim.model.parameters())


_HEAD = ("a last linear layer with one weight row per class (labels are read from it)", _class_rows)
NEEDS: dict[str, tuple[str, Callable[[Victim], bool]]] = {
    "idlg": _HEAD,
    "linear": _HEAD,
    "dager": ("transformer blocks with attention input projections", lambda v: v.blocks > 0),
}

if set(PUBLISHED_STEPS) != set(MODALITY):  # every attack says what the original procedure spent (None: nothing)
    raise ImportError(f"PUBLISHED_STEPS {sorted(PUBLISHED_STEPS)} differs from the attacks {sorted(MODALITY)}")

__all__ = [
    "ATTACKS",
    "BATCHED",
    "MODALITY",
    "NEEDS",
    "PUBLISHED_STEPS",
    "VECTORISED",
    "AttackResult",
    "Matcher",
]
