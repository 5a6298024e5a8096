"""Text gradient inversion on transformers sequence classifiers (encoders and decoders), one concept per module, in
layers:

- `reading`: what the embedding gradients give away without optimisation (token set, length, labels, order);
- `objective`: the gradient distance a batch of dummy sentences is matched with;
- `decoding`: free embeddings to tokens, and LAMP's discrete moves;
- `token_leakage` and `dager`: the analytic attacks (embedding rows; the attention blocks' gradient span), one trial
  at a time (`ANALYTIC`);
- `embedding`: the embedding-optimisation loop that `tag` and `lamp` share, each attack in its own module, run on a
  batch of trials as one vectorised optimisation (`VECTORISED`);
- `prior`: LAMP's optional language-model prior.

Every attack reads only the observed update (visible values, mask, layout, public facts), the distributed model and
tokenizer, its cfg and its seed.
"""

from collections.abc import Callable

from selenc.attacks.base import AttackResult
from selenc.attacks.text.dager import dager
from selenc.attacks.text.lamp import lamp_batch
from selenc.attacks.text.tag import tag_batch
from selenc.attacks.text.token_leakage import token_leakage

VECTORISED: dict[str, Callable[..., list[AttackResult]]] = {"tag": tag_batch, "lamp": lamp_batch}
ANALYTIC: dict[str, Callable[..., AttackResult]] = {"token_leakage": token_leakage, "dager": dager}
# The optimisation budget of each attack's original procedure (Adam steps), against which the study's budgets
# (`attacks.text.<name>.steps`) are stated: TAG ~1,000 iterations, LAMP 2,000 steps. The analytic attacks have none.
PUBLISHED_STEPS: dict[str, int | None] = {"tag": 1000, "lamp": 2000, "token_leakage": None, "dager": None}
__all__ = ["ANALYTIC", "VECTORISED"]
