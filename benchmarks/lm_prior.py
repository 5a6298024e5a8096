"""LAMP with and without its language-model prior (SmolLM2-135M) on the unprotected models: strength and cost.

Usage: python benchmarks/lm_prior.py [--sentences N] [--archs gpt2 bert] [--weights 0 0.2] [--threads 1]

For each victim and each `attacks.text.lamp.lm_weight` in --weights (every other knob from params.yaml: ratio 0,
mask_aware, batch 1), attacks N Rotten Tomatoes target sentences (the label-balanced order 0, 20, 1, 21, … of
`attack_strength_text.py`) with the same seeds, and prints one markdown table: mean ± 95% t-interval half-width of
ROUGE-1 and ROUGE-2 (`selenc.metrics.text_scores`, against the decoded ground-truth tokens), the paired difference
to the first weight on the same sentences (mean ± 95% t), and seconds per sentence. The prior's one-off load time
(dequantising the GGUF file) is measured first and is not part of any sentence's seconds.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy import stats
from tqdm.auto import tqdm

from selenc import data, metrics
from selenc.attacks import ATTACKS
from selenc.attacks.text.prior import PRIOR_NAME, language_model, nll
from selenc.config import parse_params
from selenc.models import build_victim
from selenc.observed import observe_client
from selenc.settings import derive_seed

REPO = Path(__file__).resolve().parent.parent


def subset(n: int) -> list[int]:
    """A fixed label-balanced order of the 40 targets: 0, 20, 1, 21, …"""
    order = [i for pair in zip(range(20), range(20, 40), strict=True) for i in pair]
    return order[:n]


def interval(values: list[float]) -> str:
    """mean ± half-width of the 95% t-interval."""
    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        return f"{a.mean():.3f}"
    half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a))
    return f"{a.mean():.3f} ± {half:.3f}"


def run(victim, params, indices: list[int], label: str) -> list[dict]:
    tok = victim.tokenizer
    special = set(tok.all_special_ids)
    rows = []
    for i in tqdm(indices, desc=label, leave=False, file=sys.stderr):
        batch = victim.text_batch([data.target_sentences()[i]])
        observed = observe_client(victim, batch, params.update)
        seed = derive_seed(params.study.seed, "bench", victim.arch, i)
        result = ATTACKS["lamp"](observed, victim, params.attacks.text.lamp, "mask_aware", seed)
        true_ids = [t for t in batch.inputs[0].tolist() if t not in special]
        truth = tok.decode(true_ids)
        row = metrics.text_scores(result.texts, [truth], result.token_ids, [true_ids])
        row["seconds"] = result.seconds
        row["text"], row["truth"] = result.texts[0], truth
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=8, help="target sentences per cell (2..40)")
    parser.add_argument("--archs", nargs="+", default=["gpt2"], choices=["bert", "gpt2"])
    parser.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.2], help="lm_weight values to compare")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--examples", type=int, default=2, help="example reconstructions to print per arch")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    args = parser.parse_args(argv)
    if not 2 <= args.sentences <= 40:
        parser.error("--sentences must lie in 2..40 (an interval needs two)")
    if any(w < 0 for w in args.weights):
        parser.error("--weights must be non-negative")
    torch.set_num_threads(args.threads)
    raw = yaml.safe_load(Path(args.params).read_text())
    indices = subset(args.sentences)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    print(
        f"# LAMP's LM prior ({PRIOR_NAME}): ratio 0, mask_aware, batch 1, {len(indices)} sentences, "
        f"{args.threads} thread(s), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, HEAD {commit.stdout.strip()} (+ work tree)"
    )
    if any(w > 0 for w in args.weights):
        start = time.perf_counter()
        lm = language_model("cpu")
        loaded = time.perf_counter() - start
        texts = [s.text for s in data.target_sentences()[:16]]
        start = time.perf_counter()
        nll(texts, lm)
        print(f"# prior load: {loaded:.1f} s; one LM pass over 16 sentences: {time.perf_counter() - start:.2f} s")
    print(f"# attacks.lamp (lm_weight varied): {parse_params(raw).attacks.text.lamp}\n")
    print("| model | lm_weight | n | ROUGE-1 | ROUGE-2 | Δ ROUGE-1 (paired) | Δ ROUGE-2 (paired) | s/sent |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    examples = []
    for arch in args.archs:
        base = None
        for weight in args.weights:
            changed = copy.deepcopy(raw)
            changed["attacks"]["text"]["lamp"]["lm_weight"] = weight
            params = parse_params(changed)
            victim = build_victim(arch, params, torch.device("cpu"))
            rows = run(victim, params, indices, f"{arch} lm_weight={weight}")
            base = base or rows
            deltas = [
                interval([r[k] - b[k] for r, b in zip(rows, base, strict=True)]) if rows is not base else "-"
                for k in ("rouge1", "rouge2")
            ]
            print(
                f"| {arch} | {weight:g} | {len(rows)} | {interval([r['rouge1'] for r in rows])} | "
                f"{interval([r['rouge2'] for r in rows])} | {deltas[0]} | {deltas[1]} | "
                f"{np.mean([r['seconds'] for r in rows]):.1f} |",
                flush=True,
            )
            examples += [(arch, weight, r) for r in rows[: args.examples]]
    print("\n## examples\n")
    for arch, weight, r in examples:
        print(f"- {arch} lm_weight={weight:g}: {r['text']!r} (truth: {r['truth']!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
