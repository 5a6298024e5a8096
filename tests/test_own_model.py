"""A model from params.yaml alone: the built-in models' discovered parts, the example ResNet with BatchNorm, and
malformed model entries refused at load with one line each and no output written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from selenc.config import parse_params
from selenc.gradients import client_update
from selenc.models import build_victim, target_batch

REPO = Path(__file__).resolve().parent.parent


def with_example(raw: dict) -> dict:
    """`raw` params with examples/resnet.params.yaml's entries merged in (the README's second step)."""
    fragment = yaml.safe_load((REPO / "examples" / "resnet.params.yaml").read_text())
    for section, entries in fragment.items():
        raw[section].update(entries)
    return raw


def test_the_text_models_parts_are_discovered_from_the_module(victims):
    """What the analytic text attacks read, found from structure and forward passes, is where the built-in models
    keep it: an encoder's q/k/v rows after a LayerNorm'd embedding sum, a decoder's fused c_attn columns, causal."""
    bert, gpt2 = victims["bert"].layout, victims["gpt2"].layout
    stem = "bert.encoder.layer.3.attention.self"
    assert bert.projections[3] == tuple((f"{stem}.{k}.weight", True) for k in ("query", "key", "value"))
    assert (bert.position, bert.offset) == (
        "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight",
    )
    assert bert.layer_norm and not bert.causal and bert.head == "classifier" and len(bert.blocks) == 6
    assert gpt2.projections[1] == (("transformer.h.1.attn.c_attn.weight", False),)
    assert gpt2.position == "transformer.wpe.weight" and gpt2.offset is None and gpt2.head == "score"
    assert not gpt2.layer_norm and gpt2.causal and len(gpt2.blocks) == 2
    assert victims["gpt2"].head_bias() is None and victims["bert"].head_bias()[0] == "classifier.bias"
    assert victims["lenet"].layout is None and victims["lenet"].blocks == 0


def test_block_0_inputs_of_a_token_alone_equal_the_embedding_layers_own_arithmetic(victims):
    ids = torch.tensor([5, 17, 2000])
    gpt2 = victims["gpt2"].model.transformer
    expected = gpt2.h[0].ln_1(gpt2.wte.weight[ids] + gpt2.wpe.weight[3])
    torch.testing.assert_close(victims["gpt2"].first_block_inputs(ids, 3), expected)
    e = victims["bert"].model.bert.embeddings
    expected = e.LayerNorm(
        e.word_embeddings.weight[ids] + e.position_embeddings.weight[3] + e.token_type_embeddings.weight[0]
    )
    torch.testing.assert_close(victims["bert"].first_block_inputs(ids, 3), expected, rtol=1e-5, atol=1e-5)


def test_the_example_resnet_runs_batchnorm_as_its_entry_says_and_the_mode_changes_the_update(raw, params):
    train = parse_params(with_example(raw))
    victim = build_victim("resnet", train)
    assert victim.mode == "train" and victim.model.training
    norms = [m for m in victim.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.running_mean is None for m in norms)  # nothing data-dependent kept on the module
    raw_eval = with_example(raw)
    raw_eval["models"]["resnet"]["mode"] = "eval"
    frozen = build_victim("resnet", parse_params(raw_eval))
    assert not frozen.model.training
    batch = target_batch(victim, "cifar10", [0, 1])
    g_train, g_eval = (client_update(v, batch, params.update) for v in (victim, frozen))
    assert g_train.shape == g_eval.shape and torch.isfinite(g_train).all()
    assert not torch.allclose(g_train, g_eval)  # batch statistics or running ones: a different shared update
    assert all(p.grad is None for p in victim.model.parameters())


BAD_BUILDERS = """
import torch
from torch import nn


def number(channels, num_classes):
    return 42


def no_parameters(channels, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Identity())


def wrong_input(channels, num_classes):
    return nn.Linear(10, num_classes)


def wrong_output(channels, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * 32 * 32, num_classes + 3))


def conv_head(channels, num_classes):
    return nn.Sequential(nn.Conv2d(channels, num_classes, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
"""

MALFORMED = {
    "cannot be imported": (
        {"builder": "nowhere.models:build", "source": "nowhere/models.py"},
        "models.mine.builder: cannot import 'nowhere.models:build' (No module named 'nowhere')",
    ),
    "not a module": (
        {"builder": "bad_builders:number"},
        "models.mine.builder: bad_builders:number returned int, not a torch.nn.Module",
    ),
    "no parameters": (
        {"builder": "bad_builders:no_parameters"},
        "models.mine.builder: bad_builders:no_parameters returned a module without trainable parameters",
    ),
    "does not fit the input": (
        {"builder": "bad_builders:wrong_input"},
        "models.mine: bad_builders:wrong_input's module does not fit cifar10: RuntimeError",
    ),
    "one logit per class": (
        {"builder": "bad_builders:wrong_output"},
        "models.mine: bad_builders:wrong_output's module maps one cifar10 sample to shape (1, 13); allowed: (1, 10)",
    ),
    "an attack it cannot take": (
        {"builder": "bad_builders:conv_head"},
        "sweep.mine.attacks.1: 'linear' reads a last linear layer with one weight row per class (labels are read "
        "from it), which model 'mine' lacks; allowed: dlg, ig",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_model_entry_fails_at_load_with_one_line_and_writes_nothing(raw, tmp_path, case):
    """Each entry fails before any work: `python -m selenc.sweep` exits 2 with one line naming the key, the problem
    and what is allowed, and leaves no output."""
    change, message = MALFORMED[case]
    (tmp_path / "bad_builders.py").write_text(BAD_BUILDERS)
    entry = {"source": "bad_builders.py", "modality": "image", "dataset": "cifar10"} | change
    entry["pretrain"] = raw["models"]["lenet"]["pretrain"]
    raw["models"]["mine"] = entry
    raw["sweep"]["mine"] = raw["sweep"]["lenet"] | {"attacks": ["ig", "linear"], "slices": []}
    raw["frontier"]["mine"] = raw["frontier"]["lenet"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = os.environ | {"PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "selenc.sweep", "--arch", "mine", "--reports", "reports"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert message in lines[0] and "allowed" in lines[0], lines[0]
    assert not (tmp_path / "reports").exists()


def test_a_user_model_file_is_part_of_its_trials_cache_key(raw, tmp_path, monkeypatch):
    from selenc import engine
    from selenc.grid import expand

    (tmp_path / "mymodel.py").write_text("from examples.resnet import resnet\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))
    raw = with_example(raw)
    raw["models"]["resnet"] |= {"builder": "mymodel:resnet", "source": "mymodel.py"}
    params = parse_params(raw)
    trial = expand(params, "resnet")[0]
    before = engine.trial_key(trial, params)
    (tmp_path / "mymodel.py").write_text("from examples.resnet import resnet  # edited\n")
    assert engine.trial_key(trial, params) != before
    assert json.loads(json.dumps(engine.trial_description(trial, params)))["builder"]
