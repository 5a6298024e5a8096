"""DAGER's strength on the unprotected text models: ROUGE-1/2, token F1 and seconds at batch 1 and 4.

Usage: python benchmarks/dager.py [--sentences 8] [--batches 1 4] [--archs gpt2 bert]

Each batch of B is B consecutive Rotten Tomatoes targets (batch i holds targets i·B … i·B + B − 1), sent unprotected
(ratio 0) and attacked mask-aware with params.yaml's models; the recovered sentences are matched to the true ones by
ROUGE-1 (`metrics.text_scores`). Prints one markdown table: mean ± 95% t-interval over the batches (each
batch's mean over its sentences).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from selenc import metrics
from selenc.attacks.text.dager import dager
from selenc.config import load_params
from selenc.models import build_victim, target_batch
from selenc.observed import observe_client

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ["rouge1", "rouge2", "token_f1", "exact_match"]


def interval(values: list[float]) -> str:
    """mean ± the 95% t-interval's half width."""
    a = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else float("nan")
    return f"{a.mean():.3f} ± {half:.3f}"


def run(arch: str, batch_size: int, sentences: int, params) -> dict:
    victim = build_victim(arch, params)
    tok = victim.tokenizer
    special = set(tok.all_special_ids)
    rows, seconds = [], []
    for start in tqdm(range(0, sentences, batch_size), desc=f"{arch} B={batch_size}", leave=False, file=sys.stderr):
        batch = target_batch(victim, "rotten_tomatoes", list(range(start, start + batch_size)))
        result = dager(observe_client(victim, batch, params.update), victim)
        true_ids = [[t for t in s.tolist() if t not in special] for s in batch.inputs]
        scores = metrics.text_scores(result.texts, [tok.decode(t) for t in true_ids], result.token_ids, true_ids)
        rows.append(scores)
        seconds.append(result.seconds)
    return (
        {"n": len(rows)} | {k: interval([r[k] for r in rows]) for k in COLUMNS} | {"seconds": f"{np.mean(seconds):.1f}"}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--archs", nargs="+", default=["gpt2", "bert"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(REPO / "params.yaml")
    print("| model | B | batches | ROUGE-1 | ROUGE-2 | token F1 | exact | s / batch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for arch in args.archs:
        for b in args.batches:
            r = run(arch, b, args.sentences, params)
            print(
                f"| {arch} | {b} | {r['n']} | {r['rouge1']} | {r['rouge2']} | {r['token_f1']} | {r['exact_match']} "
                f"| {r['seconds']} |"
            )


if __name__ == "__main__":
    main()
