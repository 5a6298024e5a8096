"""Throughput of the attack engine: attack-steps/s and trials/hour, one trial at a time vs batched.

Usage: python benchmarks/engine.py [--archs lenet,cnn,gpt2,bert] [--batches 1,4,8,16] [--trials 16] [--single 4]
                                   [--device auto] [--params params.yaml] [--text-vmap]

Each architecture runs its main attack (lenet: dlg, cnn: ig, gpt2: lamp, bert: tag) at the default budget of
params.yaml on real targets (trial i attacks target i mod the pool, batch 1, ratio 0, mask-aware, seed i), through
the sweep's own entry point `attacks.BATCHED`. "one at a time" runs `--single` trials one call each; "batched B" runs
`--trials` trials in calls of B trials. Every main attack is vectorised (`attacks.VECTORISED`); the text attacks'
rows go through one vmap call on a GPU and one by one through autograd on a CPU (`--text-vmap`: vmap on the CPU too).

Columns: wall seconds, attack-steps/s (optimiser iterations × restarts × trials / s: one step is one objective
evaluation with its double backward for every trial in it), trials/hour of one process, and trials/hour of the whole
machine: on the CPU one single-threaded process per core (the sweep's local executor), on a GPU one process. Torch
runs one thread per process, as the sweep's workers do. The CPU rows are measured one process at a time, so the
machine column assumes the cores scale; a busy machine makes every row slower.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from selenc import data
from selenc.attacks import BATCHED, VECTORISED
from selenc.attacks.text import embedding
from selenc.config import load_params
from selenc.models import build_victim, resolve_device, target_batch
from selenc.observed import observe_client

REPO = Path(__file__).resolve().parent.parent
MAIN_ATTACK = {"lenet": "dlg", "cnn": "ig", "gpt2": "lamp", "bert": "tag"}


def _steps(cfg) -> int:
    return cfg.steps * cfg.restarts if cfg is not None else 1


def measure(params, arch: str, batch: int, trials: int, device: torch.device) -> tuple[float, int]:
    """Wall seconds to attack `trials` trials in calls of `batch`, and the attack steps done."""
    name = MAIN_ATTACK[arch]
    cfg = params.attacks.of(name)
    victim = build_victim(arch, params, device=device)
    dataset = params.models[arch].dataset
    pool = data.TARGET_POOL[dataset]
    observed = [observe_client(victim, target_batch(victim, dataset, [i % pool]), params.update) for i in range(trials)]
    BATCHED[name](observed[:1], victim, cfg.model_copy(update={"steps": 2}) if cfg else cfg, ["mask_aware"], [0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, trials, batch):
        chunk = observed[i : i + batch]
        BATCHED[name](chunk, victim, cfg, ["mask_aware"] * len(chunk), list(range(i, i + len(chunk))))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, _steps(cfg) * trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="lenet,cnn,gpt2,bert")
    parser.add_argument("--batches", default=None, help="batch sizes (default: 4,8,16 on CPU; 64,512,2048 on CUDA)")
    parser.add_argument("--trials", type=int, default=None, help="trials per batched row (default: the largest batch)")
    parser.add_argument("--single", type=int, default=None, help="trials of the one-at-a-time row (default 4 / 2)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument(
        "--text-vmap", action="store_true", help="text rows through torch.func.vmap on the CPU too (default: GPU only)"
    )
    args = parser.parse_args()
    if args.text_vmap:
        embedding.VECTORISE["cpu"] = True
    torch.set_num_threads(1)
    params = load_params(args.params)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batches = [int(b) for b in (args.batches or ("64,512,2048" if cuda else "4,8,16")).split(",")]
    trials = args.trials or max(batches)
    single = args.single or (2 if cuda else 4)
    processes = 1 if cuda else os.cpu_count() or 1
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {os.cpu_count()} cores"
    text_rows = "vmap" if embedding.VECTORISE[device.type] else "one by one through autograd"
    print(
        f"device: {where}; torch {torch.__version__}, 1 thread per process; text rows: {text_rows}; "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    print(
        "| arch | attack | steps x restarts | mode | batch | trials | seconds | attack-steps/s | trials/h (process) "
        f"| trials/h (machine, {processes} process{'es' if processes > 1 else ''}) |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for arch in args.archs.split(","):
        name = MAIN_ATTACK[arch]
        cfg = params.attacks.of(name)
        rows = [("one at a time", 1, single)]
        if name in VECTORISED:
            rows += [("batched", b, trials) for b in batches]
        for mode, batch, n in rows:
            print(f"{arch}: {mode} {batch} x {n} trials ...", file=sys.stderr)
            seconds, steps = measure(params, arch, batch, n, device)
            per_hour = n / seconds * 3600
            print(
                f"| {arch} | {name} | {_steps(cfg)} | {mode} | {batch} | {n} | {seconds:.1f} | {steps / seconds:,.0f} "
                f"| {per_hour:,.0f} | {per_hour * processes:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
