"""Reconstruction quality: how much of the client's batch an attack recovered.

Images (pixels in [0, 1]): MSE in [0, 1] (lower = closer), PSNR in dB = 10·log10(1/MSE) in [0, inf] (inf for an
exact copy; ~30 dB looks identical, below ~12 dB is unrecognisable), SSIM from scikit-image's
`structural_similarity` (the standard Gaussian-free 7x7 window SSIM, not a wavelet CW-SSIM) in [-1, 1], and
label accuracy in [0, 1].
Text: token precision / recall / F1 over the multiset of token ids (bag of words, order ignored) in [0, 1];
ROUGE-1/2/L F-measures from `rouge-score` in [0, 1]; exact match (the whole sentence) in {0, 1}.

A batch is scored after matching each reconstruction to one ground-truth sample (Hungarian assignment on MSE for
images, on ROUGE-1 for text), because an attack's batch order is arbitrary: the means over the batch, and the share
recovered (images at RECOVERED_DB or more; text: exact_match, the share of sentences recovered word for word).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import cache

import numpy as np
import torch
from rouge_score import rouge_scorer
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity

RECOVERED_DB = 30.0  # PSNR at which a reconstruction counts as recovered (it looks identical to the original)


def _check_batch(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"image batches must both be (B, C, H, W) of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).square().mean())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio for images in [0, 1]; inf when identical."""
    err = mse(a, b)
    return float("inf") if err == 0 else float(10 * np.log10(1.0 / err))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of two (C, H, W) images in [0, 1] (scikit-image, channels averaged)."""
    x = a.detach().cpu().double().permute(1, 2, 0).numpy()
    y = b.detach().cpu().double().permute(1, 2, 0).numpy()
    return float(structural_similarity(x, y, data_range=1.0, channel_axis=-1))


def match(cost: np.ndarray) -> np.ndarray:
    """For each ground-truth sample j, the reconstruction matched to it (minimum total cost assignment)."""
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(cost.shape[1], dtype=np.int64)
    order[cols] = rows
    return order


def image_scores(
    recon: torch.Tensor, truth: torch.Tensor, recon_labels: torch.Tensor, true_labels: torch.Tensor
) -> dict:
    """Per-batch means of mse, psnr, ssim and label_acc, and the share of images recovered (PSNR >= RECOVERED_DB),
    after matching reconstructions to ground truth (`order`: the reconstruction matched to each true sample)."""
    _check_batch(recon, truth)
    recon, truth = recon.detach().cpu().clamp(0, 1), truth.detach().cpu()
    cost = np.array([[mse(r, t) for t in truth] for r in recon])
    order = match(cost)
    pairs = [(recon[order[j]], truth[j]) for j in range(len(truth))]
    psnrs = [psnr(r, t) for r, t in pairs]
    return {
        "mse": float(np.mean([mse(r, t) for r, t in pairs])),
        "psnr": float(np.mean(psnrs)),
        "ssim": float(np.mean([ssim(r, t) for r, t in pairs])),
        "recovered": float(np.mean([p >= RECOVERED_DB for p in psnrs])),
        "label_acc": label_accuracy(recon_labels, true_labels),
        "order": order.tolist(),
    }


def label_accuracy(recovered: torch.Tensor, truth: torch.Tensor) -> float:
    """Fraction of the true labels recovered, as multisets (label order within a batch is not identifiable)."""
    got, want = Counter(recovered.tolist()), Counter(truth.tolist())
    return sum((got & want).values()) / max(1, sum(want.values()))


def token_prf(predicted: Sequence, truth: Sequence) -> dict[str, float]:
    """Bag-of-tokens precision, recall and F1 (multisets; 0 when either side is empty)."""
    got, want = Counter(predicted), Counter(truth)
    hit = sum((got & want).values())
    p = hit / sum(got.values()) if got else 0.0
    r = hit / sum(want.values()) if want else 0.0
    return {"token_precision": p, "token_recall": r, "token_f1": 2 * p * r / (p + r) if p + r else 0.0}


@cache
def _rouge() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)


def rouge(predicted: str, truth: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures of one sentence against its reference."""
    s = _rouge().score(truth, predicted)
    return {k: s[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")}


def text_scores(
    predicted: Sequence[str],
    truth: Sequence[str],
    predicted_ids: Sequence[Sequence[int]],
    true_ids: Sequence[Sequence[int]],
) -> dict:
    """Per-batch means of ROUGE-1/2/L, token F1 and exact match, after matching sentences by ROUGE-1 (`order`: the
    prediction matched to each true sentence)."""
    if len(predicted) != len(truth) or len(predicted_ids) != len(true_ids) or len(predicted) != len(predicted_ids):
        raise ValueError(f"text batches differ in size: {len(predicted)} predictions for {len(truth)} sentences")
    cost = np.array([[-rouge(p, t)["rouge1"] for t in truth] for p in predicted])
    order = match(cost)
    rows = []
    for j in range(len(truth)):
        i = order[j]
        row = rouge(predicted[i], truth[j]) | {"token_f1": token_prf(predicted_ids[i], true_ids[j])["token_f1"]}
        row["exact_match"] = float(" ".join(predicted[i].split()) == " ".join(truth[j].split()))
        rows.append(row)
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["order"] = order.tolist()
    return out
