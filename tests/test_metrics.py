"""Reconstruction metrics against known values."""

import math

import pytest
import torch

from selenc import data
from selenc.metrics import image_scores, label_accuracy, psnr, rouge, ssim, text_scores, token_prf


@pytest.fixture(scope="module")
def cifar():
    return data.to_tensor(data.target_images("cifar10").images[:3], 3)


def test_identical_images(cifar):
    assert psnr(cifar[0], cifar[0]) == math.inf
    assert ssim(cifar[0], cifar[0]) == pytest.approx(1.0)
    scores = image_scores(cifar, cifar, torch.tensor([3, 8, 8]), torch.tensor([3, 8, 8]))
    assert scores["mse"] == 0 and scores["psnr"] == math.inf and scores["label_acc"] == 1.0


def test_known_psnr_and_degraded_ssim(cifar):
    shifted = (cifar[0] + 0.1).clamp(0, 1)
    err = float((shifted - cifar[0]).square().mean())
    assert psnr(shifted, cifar[0]) == pytest.approx(10 * math.log10(1 / err))
    noise = torch.rand(cifar[0].shape, generator=torch.Generator().manual_seed(0))
    assert ssim(noise, cifar[0]) < 0.1 < ssim(shifted, cifar[0])
    assert psnr(torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.1)) == pytest.approx(20.0)


def test_batch_is_matched_before_scoring(cifar):
    flipped = cifar.flip(0)
    scores = image_scores(flipped, cifar, torch.tensor([8, 8, 3]), torch.tensor([3, 8, 8]))
    assert scores["psnr"] == math.inf and scores["order"] == [2, 1, 0] and scores["label_acc"] == 1.0
    assert scores["recovered"] == 1.0
    half = flipped.clone()
    half[0] = (half[0] + 0.1).clamp(0, 1)  # the reconstruction of the third image: about 20 dB, still matched to it
    labels = torch.tensor([3, 8, 8])
    assert image_scores(half, cifar, labels, labels)["recovered"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="image batches must both be"):
        image_scores(cifar[:2], cifar, torch.tensor([0, 0]), torch.tensor([0, 0, 0]))


def test_label_accuracy_counts_multisets():
    assert label_accuracy(torch.tensor([1, 1, 2]), torch.tensor([1, 2, 2])) == pytest.approx(2 / 3)
    assert label_accuracy(torch.tensor([0]), torch.tensor([1])) == 0.0


def test_token_and_rouge_scores():
    assert token_prf([1, 2, 2, 3], [2, 2, 4]) == pytest.approx(
        {"token_precision": 0.5, "token_recall": 2 / 3, "token_f1": 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)}
    )
    assert token_prf([], [1])["token_f1"] == 0.0
    same = rouge("a charming journey .", "a charming journey .")
    assert same == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    shuffled = rouge("journey charming a", "a charming journey")
    assert shuffled["rouge1"] == 1.0 and shuffled["rouge2"] == 0.0 and shuffled["rougeL"] < 1.0
    assert rouge("tedious", "a charming journey")["rouge1"] == 0.0


def test_text_batch_matching_and_exact_match():
    truth = ["simplistic , silly and tedious .", "a charming journey ."]
    pred = ["a charming  journey .", "silly and tedious simplistic"]
    s = text_scores(pred, truth, [[1, 2], [3, 4]], [[3, 4], [1, 2]])
    assert s["order"] == [1, 0]
    assert s["exact_match"] == 0.5 and s["token_f1"] == 1.0 and s["rouge1"] == 1.0 and s["rouge2"] < 1.0
    with pytest.raises(ValueError, match="differ in size"):
        text_scores(pred, truth[:1], [[1]], [[1]])
