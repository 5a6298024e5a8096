"""selenc's image attacks against the original procedures, on the same models, gradients and targets.

Usage: python benchmarks/peer_attacks.py [--targets 20] [--out FILE] [--params params.yaml] [--ig-steps 24000]

The peers are reimplemented from the papers' descriptions, one target at a time with plain autograd and torch's own
optimisers, as the original code ran:

- DLG (Zhu et al., 2019) on LeNet: `torch.optim.LBFGS` with lr 1 and its defaults (20 iterations per step, history
  100, no line search), 300 steps; dummy image and dummy label drawn from a standard normal, the label a softmax;
  the squared gradient distance, unnormalised.
- Inverting Gradients (Geiping et al., 2020) on the CNN: 1 − cosine similarity of the full gradients + tv · TV,
  Adam (lr 0.1) on the sign of the input gradient, lr x0.1 at 3/8, 5/8 and 7/8 of the iterations, the image boxed
  to [0, 1], a standard-normal start, `--ig-restarts` restarts with the lowest final objective kept, labels known
  (the paper's assumption; selenc reads them from the gradient instead). The published budget is 24,000 iterations
  and TV weight 0.2 (prior-art notes); `--ig-steps` and `--ig-tv` change them, and the header says what ran.

selenc's side is `dlg` on LeNet and `ig` on the CNN with the budgets of `--params`, every target in one vectorised
batch (seconds: the batch's wall time shared). All on the unprotected update (ratio 0), batch 1, FedSGD, the first N
of the 20 CIFAR-10 targets, one torch thread. Prints a per-target table (PSNR, SSIM, seconds for each side) and a
summary row per attack (median PSNR, targets >= 30 dB, median SSIM, mean seconds); `--out` writes the per-target rows
as CSV (target, attack, model, ours_psnr, peer_psnr, ours_s, peer_s).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from selenc import data
from selenc.attacks.base import seeded
from selenc.attacks.image import VECTORISED
from selenc.attacks.image.matching import total_variation
from selenc.config import load_params
from selenc.metrics import image_scores
from selenc.models import Batch, Victim, build_victim
from selenc.observed import observe_client

REPO = Path(__file__).resolve().parent.parent
RUNS = (("dlg", "lenet"), ("ig", "cnn"))
COLUMNS = ("target", "attack", "model", "ours_psnr", "peer_psnr", "ours_s", "peer_s")


def _update(victim: Victim, batch: Batch, create_graph: bool) -> torch.Tensor:
    weights = [p for p in victim.model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(victim.loss(batch), weights, create_graph=create_graph)
    return torch.cat([g.reshape(-1) for g in grads])


def peer_dlg(victim: Victim, target: torch.Tensor, shape: tuple, classes: int, seed: int) -> tuple:
    """The original DLG procedure: (image, label)."""
    gen = seeded(seed, "peer-dlg")
    x = torch.randn((1, *shape), generator=gen).requires_grad_()
    z = torch.randn((1, classes), generator=gen).requires_grad_()
    opt = torch.optim.LBFGS([x, z], lr=1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (_update(victim, Batch(x, z.softmax(-1)), True) - target).square().sum()
        loss.backward()
        return loss

    for _ in range(300):
        opt.step(closure)
    return x.detach().clamp(0, 1), z.detach().argmax(-1)


def peer_ig(victim: Victim, target: torch.Tensor, labels: torch.Tensor, args, seed: int) -> torch.Tensor:
    """Inverting Gradients with its published settings: the image of the restart with the lowest final objective."""
    best, best_loss = None, float("inf")
    for restart in range(args.ig_restarts):
        x = torch.randn((1, *victim.input_shape), generator=seeded(seed, "peer-ig", restart)).requires_grad_()
        opt = torch.optim.Adam([x], lr=0.1)
        marks = [round(args.ig_steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=marks, gamma=0.1)

        def objective(x: torch.Tensor) -> torch.Tensor:
            g = _update(victim, Batch(x, labels), True)
            return 1 - torch.nn.functional.cosine_similarity(g, target, dim=0) + args.ig_tv * total_variation(x)

        for _ in range(args.ig_steps):
            opt.zero_grad()
            loss = objective(x)
            (x.grad,) = torch.autograd.grad(loss, x)
            x.grad.sign_()
            opt.step()
            schedule.step()
            with torch.no_grad():
                x.clamp_(0, 1)
        final = float(objective(x).detach())
        if final < best_loss:
            best, best_loss = x.detach().clone(), final
    return best


def compare(name: str, arch: str, params, args) -> list[dict]:
    """Per-target rows for one attack: selenc's batched attack, then the peer target by target."""
    victim = build_victim(arch, params)
    images = data.target_images("cifar10")
    batches = [
        victim.image_batch(data.Images(images.images[i : i + 1], images.labels[i : i + 1])) for i in range(args.targets)
    ]
    observed = [observe_client(victim, b, params.update) for b in batches]
    print(f"{name} on {arch}: selenc, {args.targets} targets in one batch ...", file=sys.stderr)
    ours = VECTORISED[name](
        observed, victim, params.attacks.of(name), ["mask_aware"] * args.targets, [params.study.seed] * args.targets
    )
    rows = []
    for i in tqdm(range(args.targets), desc=f"peer {name}", file=sys.stderr):
        batch, target = batches[i], observed[i].zero_filled()
        start = time.perf_counter()
        if name == "dlg":
            image, label = peer_dlg(victim, target, victim.input_shape, victim.num_classes, params.study.seed + i)
        else:
            image, label = peer_ig(victim, target, batch.labels, args, params.study.seed + i), batch.labels
        seconds = time.perf_counter() - start
        mine = image_scores(ours[i].images, batch.inputs, ours[i].labels, batch.labels)
        peer = image_scores(image, batch.inputs, label, batch.labels)
        rows.append(
            {
                "target": i,
                "attack": name,
                "model": arch,
                "ours_psnr": mine["psnr"],
                "peer_psnr": peer["psnr"],
                "ours_s": ours[i].seconds,
                "peer_s": seconds,
                "ours_ssim": mine["ssim"],
                "peer_ssim": peer["ssim"],
            }
        )
    return rows


def summary(rows: list[dict], side: str) -> str:
    psnr = [r[f"{side}_psnr"] for r in rows]
    ssim = statistics.median(r[f"{side}_ssim"] for r in rows)
    seconds = statistics.mean(r[f"{side}_s"] for r in rows)
    strong = sum(p >= 30 for p in psnr)
    return f"{statistics.median(psnr):.1f} dB, {strong}/{len(psnr)} >= 30, SSIM {ssim:.3f}, {seconds:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=20, help="CIFAR-10 targets per attack (1..20)")
    parser.add_argument("--out", help="write the per-target rows as CSV here")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--ig-steps", type=int, default=24000, help="peer IG iterations (published: 24,000)")
    parser.add_argument("--ig-tv", type=float, default=0.2, help="peer IG total-variation weight")
    parser.add_argument("--ig-restarts", type=int, default=1, help="peer IG restarts")
    parser.add_argument("--attacks", default="dlg,ig", help="which comparisons to run: dlg, ig or both")
    args = parser.parse_args()
    if not 1 <= args.targets <= 20:
        parser.error("--targets must lie in 1..20")
    chosen = args.attacks.split(",")
    if not chosen or any(a not in dict(RUNS) for a in chosen):
        parser.error(f"--attacks must name some of {', '.join(dict(RUNS))}")
    torch.set_num_threads(1)
    params = load_params(args.params)
    a = params.attacks.image
    print(
        f"selenc: dlg {a.dlg.steps} x {a.dlg.restarts} restarts; ig {a.ig.steps} x {a.ig.restarts}, tv {a.ig.tv}. "
        f"peers: DLG 300 x 20 L-BFGS iterations; IG {args.ig_steps} iterations x {args.ig_restarts} restarts, tv "
        f"{args.ig_tv}. {args.targets} CIFAR-10 targets, ratio 0, batch 1, seed {params.study.seed}, 1 thread\n"
    )
    rows = [row for name, arch in RUNS if name in chosen for row in compare(name, arch, params, args)]
    print("| target | attack | model | ours PSNR | peer PSNR | ours SSIM | peer SSIM | ours s | peer s |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['target']} | {r['attack']} | {r['model']} | {r['ours_psnr']:.1f} | {r['peer_psnr']:.1f} "
            f"| {r['ours_ssim']:.3f} | {r['peer_ssim']:.3f} | {r['ours_s']:.1f} | {r['peer_s']:.1f} |"
        )
    print("\n| attack | model | selenc | peer |")
    print("|---|---|---|---|")
    for name, arch in RUNS:
        part = [r for r in rows if r["attack"] == name]
        if part:
            print(f"| {name} | {arch} | {summary(part, 'ours')} | {summary(part, 'peer')} |")
    if args.out:
        with open(args.out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        print(f"\nper-target rows: {args.out}")


if __name__ == "__main__":
    main()
