"""Text gradient inversion on BERT / GPT-2 classifiers, one concept per module, in layers:

- `reading`: what the embedding gradients give away without optimisation (token set, length, labels, order);
- `objective`: the gradient distance a batch of dummy sentences is matched with;
- `decoding`: free embeddings to tokens, and LAMP's discrete moves;
- `token_leakage` and `dager`: the analytic attacks (embedding rows; the attention blocks' gradient span);
- `optimise`: TAG and LAMP on a batch of trials.

Every attack reads only the observed update (visible values, mask, layout, public facts), the distributed model and
tokenizer, its cfg and its seed. `BATCHED` names the attacks that run a batch of trials as one vectorised
optimisation (`optimise`); `ATTACKS` holds the one-trial form of every text attack.
"""

from collections.abc import Callable

from selenc.attacks.base import AttackResult, one_trial
from selenc.attacks.text.dager import dager
from selenc.attacks.text.optimise import BATCHED
from selenc.attacks.text.token_leakage import token_leakage

ATTACKS: dict[str, Callable[..., AttackResult]] = {"token_leakage": token_leakage, "dager": dager} | {
    name: one_trial(fn) for name, fn in BATCHED.items()
}

__all__ = ["ATTACKS", "BATCHED"]
