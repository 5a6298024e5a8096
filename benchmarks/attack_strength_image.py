"""Strength and speed of the image attacks on the UNPROTECTED models (ratio 0, mask-aware, default params).

Usage: python benchmarks/attack_strength_image.py [--images 20] [--params params.yaml] [--threads 1]

Runs `dlg` and `idlg` on `lenet` and `ig` on `cnn` over the first N of the 20 real CIFAR-10 target images, one image
per client batch (batch 1), all N trials attacked as one batch (`attacks.image.BATCHED`), with the attack budgets of
params.yaml and seed `study.seed`. Prints two markdown tables:

- strength: median / mean PSNR (dB), images with PSNR >= 30 dB, median SSIM, label accuracy and wall seconds per
  image (the batch's time shared). Goals: dlg on lenet >= 30 dB on at least 10 of 20 images; ig on cnn median PSNR
  >= 20 dB.
- speed: ms per attack step (one objective evaluation and its backward, the double backward through the update
  included) for the DLG objective (squared distance) and the IG objective (cosine + TV), and its ratio to one plain
  forward + backward of the same model on the same batch (the client's own cost); one trial, no batching. Goal:
  ratio <= 4. Medians of repeated blocks, so other processes on the machine inflate them less.

Saves `benchmarks/out/ig_cnn.png`: originals (top) over IG reconstructions (bottom) with PSNR and labels.
Torch runs on `--threads` threads (1 by default: for these small models one thread is fastest, and two threads on
a shared 2-core machine can be many times slower).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from selenc import data
from selenc.attacks.image import VECTORISED as BATCHED
from selenc.attacks.image.matching import Matching, random_images
from selenc.config import load_params
from selenc.metrics import image_scores
from selenc.models import Batch, build_victim
from selenc.observed import observe_client
from selenc.settings import Params

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "out"
RUNS = (("dlg", "lenet"), ("idlg", "lenet"), ("ig", "cnn"))


def strength(params: Params, n_images: int) -> tuple[list[str], dict]:
    """One table row per (attack, model); also the per-image IG results for the figure."""
    images = data.target_images("cifar10")
    rows, figure = [], {}
    victims = {arch: build_victim(arch, params) for arch in {arch for _, arch in RUNS}}
    for name, arch in RUNS:
        victim = victims[arch]
        cfg = params.attacks.of(name)
        scores, seconds = [], []
        recon = []
        batches = [
            victim.image_batch(data.Images(images.images[i : i + 1], images.labels[i : i + 1])) for i in range(n_images)
        ]
        observed = [observe_client(victim, batch, params.update) for batch in batches]
        seeds = [params.study.seed] * n_images
        print(f"{name} on {arch}: {n_images} trials in one batch ...", file=sys.stderr)
        results = BATCHED[name](observed, victim, cfg, ["mask_aware"] * n_images, seeds)
        for batch, result in zip(batches, results, strict=True):
            scores.append(image_scores(result.images, batch.inputs, result.labels, batch.labels))
            seconds.append(result.seconds)
            recon.append((batch.inputs[0].cpu(), result.images[0], scores[-1]["psnr"], int(result.labels[0])))
        psnrs = [s["psnr"] for s in scores]
        rows.append(
            f"| {name} | {arch} | {n_images} | {statistics.median(psnrs):.2f} | {np.mean(psnrs):.2f} "
            f"| {sum(p >= 30 for p in psnrs)} | {statistics.median(s['ssim'] for s in scores):.3f} "
            f"| {np.mean([s['label_acc'] for s in scores]):.2f} | {np.mean(seconds):.1f} |"
        )
        if name == "ig":
            figure = {"recon": recon, "labels": images.labels[:n_images]}
    return rows, figure


def _median_ms(fn, reps: int, blocks: int = 5) -> float:
    """Median over `blocks` of the mean time of `reps` calls, in ms (after a warm-up)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - start) / reps * 1000)
    return statistics.median(times)


def _step_functions(victim, batch: Batch, observed, x: torch.Tensor, tv: float):
    """The client's forward + backward, and one step of each attack objective (value and input gradient), as the
    attacks evaluate them (`Matching`, a batch of one trial)."""
    weights = [p for p in victim.model.parameters() if p.requires_grad]
    matching = Matching(victim, observed, 1)
    target = observed.zero_filled()
    ones, norm = torch.ones_like(target), target.norm()
    args = (batch.labels[None], target[None], ones[None], norm[None])
    l2 = matching.step(lambda x, y, t, w, n: matching.l2(x, y, t, w, 1.0 / n.square()), (0,) * 5)
    cosine = matching.step(lambda x, y, t, w, n: matching.cosine(x, y, t, w, n, tv), (0,) * 5)
    return (
        lambda: torch.autograd.grad(victim.loss(batch), weights),
        {"l2 (dlg/idlg)": lambda: l2(x[None], *args), "cosine + TV (ig)": lambda: cosine(x[None], *args)},
    )


def speed(params: Params, reps: int = 50) -> list[str]:
    """ms per attack step and its ratio to one forward + backward of the model, batch 1 and 8."""
    images = data.target_images("cifar10")
    rows = []
    for arch in ("lenet", "cnn"):
        victim = build_victim(arch, params)
        for b in (1, 8):
            batch = victim.image_batch(data.Images(images.images[:b], images.labels[:b]))
            observed = observe_client(victim, batch, params.update)
            x = random_images(observed.public, 0, "speed")
            plain, steps = _step_functions(victim, batch, observed, x, params.attacks.image.ig.tv[0])
            base = _median_ms(plain, reps)
            for objective, step in steps.items():
                ms = _median_ms(step, reps)
                rows.append(f"| {arch} | {b} | {objective} | {ms:.2f} | {base:.2f} | {ms / base:.1f}x |")
    return rows


def save_figure(figure: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recon = figure["recon"]
    n = len(recon)
    cols = min(n, 10)
    groups = -(-n // cols)
    fig, axes = plt.subplots(2 * groups, cols, figsize=(1.3 * cols, 2.9 * groups), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (truth, image, p, label) in enumerate(recon):
        g, c = divmod(i, cols)
        axes[2 * g, c].imshow(truth.permute(1, 2, 0).numpy())
        axes[2 * g, c].set_title(f"#{i} y={int(figure['labels'][i])}", fontsize=7)
        axes[2 * g + 1, c].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        axes[2 * g + 1, c].set_title(f"{p:.1f} dB y={label}", fontsize=7)
    fig.suptitle("IG on the unprotected cnn (CIFAR-10): originals over reconstructions", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="target images per attack (1..20)")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    if not 1 <= args.images <= 20:
        parser.error("--images must lie in 1..20")
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    a = params.attacks.image
    print(
        f"budgets: dlg {a.dlg.steps} steps x {a.dlg.restarts} restarts (lr {a.dlg.lr}, labels {a.dlg.labels}); idlg "
        f"{a.idlg.steps} x {a.idlg.restarts} (lr {a.idlg.lr}); ig {a.ig.steps} x {a.ig.restarts} (lr {a.ig.lr}, tv "
        f"{a.ig.tv}); "
        f"update {params.update.kind}, batch 1, ratio 0, mask_aware, seed {params.study.seed}, "
        f"{torch.get_num_threads()} thread(s)\n"
    )
    rows, figure = strength(params, args.images)
    print("| attack | model | images | median PSNR | mean PSNR | >= 30 dB | median SSIM | label acc | s / image |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    if figure:
        path = OUT / "ig_cnn.png"
        save_figure(figure, path)
        print(f"\nIG figure: {path.relative_to(REPO)}")
    print("\n| model | batch | objective | ms / attack step | ms / forward+backward | ratio |")
    print("|---|---:|---|---:|---:|---:|")
    print("\n".join(speed(params)))


if __name__ == "__main__":
    main()
