"""Strength and cost of the linear-layer inversion attack on the UNPROTECTED models (ratio 0, mask-aware).

Usage: python benchmarks/linear_attack.py [--images 8] [--batches 1,4] [--ratios 0.1,0.3] [--params params.yaml]
    [--threads 1]

For `lenet` and `cnn` and each client batch size B of `--batches`, attacks `--images` targets of the real CIFAR-10
pool (B = 1: targets 0..N−1, one per trial; B > 1: N/B trials of B consecutive targets) as one batch of trials
(`attacks.BATCHED["linear"]`), with the attack budget of params and seed `study.seed`, and prints a markdown table:
what the attacker read of the last layer (`info["features"]`, and how many trials read it exactly), PSNR (dB) and
SSIM as mean ± 95% t-interval over the trials (`selenc.metrics.image_scores`: each trial's batch mean after
Hungarian matching), label accuracy, and wall seconds per trial (the batch's time shared). Then, at batch 1, the
same under magnitude masks at each ratio of `--ratios` (the top ρ·n coordinates by |g| hidden, the mask-aware
attacker told the metric): what the attacker reads of the last layer when its largest entries are encrypted. Torch
runs on `--threads` threads (1 by default: fastest for these small models on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter

import torch
from scipy import stats

from selenc.attacks import BATCHED
from selenc.attacks.image.linear import choose_optimiser
from selenc.config import load_params
from selenc.gradients import client_update
from selenc.metrics import image_scores
from selenc.models import build_victim, target_batch
from selenc.observed import observe, observe_client
from selenc.selection import top_k_mask


def interval(values: list[float]) -> str:
    """mean ± half-width of the 95% Student-t interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return f"{mean:.2f} ± {half:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--ratios", default="0.1,0.3")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    cfg = params.attacks.image.linear
    print(f"# attacks.linear: {cfg}")
    print("| model | optimiser | B | mask | trials | features (exact) | PSNR (dB) | SSIM | label acc | s / trial |")
    print("|---|---|---:|---|---:|---|---:|---:|---:|---:|")
    for arch in ("lenet", "cnn"):
        victim = build_victim(arch, params)
        cases = [(int(b), 0.0) for b in args.batches.split(",")]
        cases += [(1, float(r)) for r in args.ratios.split(",") if r]
        for size, ratio in cases:
            update = params.update.model_copy(update={"batch_size": size})
            batches = [target_batch(victim, "cifar10", list(range(i, i + size))) for i in range(0, args.images, size)]
            if ratio == 0:
                observed = [observe_client(victim, b, update) for b in batches]
            else:
                grads = [client_update(victim, b, update) for b in batches]
                masks = [top_k_mask(g.abs(), ratio) for g in grads]
                observed = [observe(victim, g, m, size, update, "magnitude") for g, m in zip(grads, masks, strict=True)]
            mask = "none" if ratio == 0 else f"magnitude {ratio}"
            print(f"{arch}, B = {size}, {mask}: {len(batches)} trials in one batch ...", file=sys.stderr)
            results = BATCHED["linear"](
                observed, victim, cfg, ["mask_aware"] * len(batches), [params.study.seed] * len(batches)
            )
            scores = [
                image_scores(r.images, b.inputs, r.labels, b.labels) for r, b in zip(results, batches, strict=True)
            ]
            kinds = Counter(r.info["features"] for r in results)
            exact = sum(r.info["exact"] for r in results)
            read = ", ".join(f"{k} {n}" for k, n in kinds.items())
            print(
                f"| {arch} | {choose_optimiser(cfg, victim)} | {size} | {mask} | {len(batches)} | {read} ({exact}) "
                f"| {interval([s['psnr'] for s in scores])} | {interval([s['ssim'] for s in scores])} "
                f"| {statistics.fmean(s['label_acc'] for s in scores):.2f} "
                f"| {statistics.fmean(r.seconds for r in results):.2f} |"
            )


if __name__ == "__main__":
    main()
