"""The four victims: seeded, on the resolved device, real tokenizers/weights, finite updates on real batches."""

import pytest
import torch
from safetensors import safe_open
from torch import nn

from selenc import data
from selenc.gradients import client_update
from selenc.models import build_victim, resolve_device
from selenc.zoo import LeNet
from tests.conftest import with_changes


def real_batch(victim, params, n=2):
    if victim.modality == "image":
        imgs = data.target_images(params.models[victim.arch].dataset)
        return victim.image_batch(data.Images(imgs.images[:n], imgs.labels[:n]))
    return victim.text_batch(data.target_sentences()[:n])


@pytest.mark.parametrize("arch", ["lenet", "cnn", "bert", "gpt2"])
def test_each_model_yields_a_finite_update_on_a_real_batch(victims, params, arch):
    victim = victims[arch]
    g = client_update(victim, real_batch(victim, params), params.update)
    assert g.shape == (victim.num_parameters(),)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(p.device.type == resolve_device("auto").type for p in victim.model.parameters())


@pytest.mark.parametrize("arch", ["lenet", "cnn", "gpt2"])
def test_init_is_seeded(raw, arch):
    a, b = (build_victim(arch, with_changes(raw, **{"study.seed": 7})) for _ in range(2))
    c = build_victim(arch, with_changes(raw, **{"study.seed": 8}))
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.model.parameters(), c.model.parameters(), strict=True))


def test_build_leaves_the_global_rng_alone(params):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_victim("lenet", params)
    assert torch.equal(torch.rand(3), expected)


def test_lenet_is_dlgs(victims):
    model = victims["lenet"].model
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(12, (5, 5))] * 3
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 3
    assert all(p.abs().max() <= 0.5 for p in model.parameters())  # uniform ±0.5 init
    assert victims["lenet"].input_shape == (3, 32, 32)


def test_lenet_on_mnist_takes_padded_one_channel_digits(raw):
    victim = build_victim(
        "lenet", with_changes(raw, **{"models.lenet.dataset": "mnist", "models.lenet.init": "default"})
    )
    assert victim.input_shape == (1, 32, 32)
    assert victim.model.body[0].in_channels == 1
    assert victim.model.body[0].weight.abs().max() < 0.5  # PyTorch's default init is much narrower
    batch = victim.image_batch(data.target_images("mnist"))
    assert victim.logits(batch).shape == (20, 10)


def test_cnn_width_and_depth_are_configurable(raw):
    victim = build_victim("cnn", with_changes(raw, **{"models.cnn.width": 8, "models.cnn.depth": 4}))
    convs = [m for m in victim.model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64]
    assert victim.model.fc.in_features == 64 * 4 * 4
    assert any(isinstance(m, nn.ReLU) for m in victim.model.modules())


def test_bert_encoder_is_the_pretrained_minilm(victims):
    model = victims["bert"].model
    with safe_open(str(data.minilm_dir() / "model.safetensors"), "pt") as f:
        key = next(k for k in f.keys() if k.endswith("word_embeddings.weight"))  # noqa: SIM118
        stored = f.get_tensor(key)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight.detach().cpu(), stored)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    ids = victims["bert"].tokenizer("it's a charming and often affecting journey.")["input_ids"]
    assert ids == [101, 2009, 1005, 1055, 1037, 11951, 1998, 2411, 12473, 4990, 1012, 102]


def test_gpt2_has_the_real_tokenizer_and_params_size(victims, params):
    victim = victims["gpt2"]
    tok = victim.tokenizer
    assert len(tok) == 50257 and tok.pad_token_id == tok.eos_token_id == 50256
    assert tok("Hello world! it's a charming and often affecting journey.")["input_ids"] == [
        15496,
        995,
        0,
        340,
        338,
        257,
        23332,
        290,
        1690,
        13891,
        7002,
        13,
    ]
    cfg = victim.model.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (
        params.models.gpt2.n_layer,
        params.models.gpt2.n_head,
        params.models.gpt2.n_embd,
    )


def test_text_batches_are_padded_and_truncated(victims, params):
    victim = victims["gpt2"]
    long = data.Sentence(" ".join(["word"] * 200), 1)
    batch = victim.text_batch([long, data.target_sentences()[0]])
    assert batch.inputs.shape == (2, params.models.gpt2.max_length)
    assert batch.attention_mask[1].sum() < params.models.gpt2.max_length  # the short one is padded
    # padding must not change a sentence's logits: GPT-2 classifies from the last non-pad token
    alone = victim.logits(victim.text_batch([data.target_sentences()[0]]))
    assert torch.allclose(victim.logits(batch)[1], alone[0], atol=1e-5)


def test_pretraining_on_real_data_lowers_the_loss(raw):
    cfg = {"epochs": 3, "samples": 200, "batch_size": 20, "lr": 0.01}
    params = with_changes(raw, **{"models.cnn.pretrain": cfg})
    assert build_victim("cnn", params).pretrain_losses == []  # the untrained victim ignores the pretraining
    victim = build_victim("cnn", params, trained=True)
    losses = victim.pretrain_losses
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    again = build_victim("cnn", params, trained=True)
    assert again.pretrain_losses == losses  # seeded shuffling: same params, same training


def test_text_pretraining_runs_on_the_pool(raw):
    cfg = {"epochs": 1, "samples": 32, "batch_size": 16, "lr": 0.001}
    victim = build_victim("gpt2", with_changes(raw, **{"models.gpt2.pretrain": cfg}), trained=True)
    assert len(victim.pretrain_losses) == 2 and all(map(lambda v: v == v, victim.pretrain_losses))
    assert not victim.model.training


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device is available; use 'auto' or 'cpu'"):
            resolve_device("cuda")


def test_unknown_arch_is_refused(params):
    with pytest.raises(ValueError, match="unknown model 'vgg'; allowed: lenet, cnn, bert, gpt2"):
        build_victim("vgg", params)


def test_lenet_class_shapes():
    assert LeNet(1, 10)(torch.zeros(4, 1, 32, 32)).shape == (4, 10)
