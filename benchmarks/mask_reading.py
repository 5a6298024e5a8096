"""What the public mask gives away on the text models: the token set read off the mask vs ignoring it.

Usage: python benchmarks/mask_reading.py [--archs gpt2,bert] [--metrics magnitude,embedding_rows]
                                         [--ratios 0.01,0.05,0.2,0.5] [--sentences 8] [--batch 1]

For each victim, metric and ratio, masks the updates of N Rotten Tomatoes target sentences (in batches of `--batch`,
own mask, params.yaml defaults) and runs `token_leakage` mask-aware on the server's view three ways: the mask with
index-ordered ties and its metric withheld (metric None: the attacker before mask reading, which read only visible
non-zero values), the same mask with its metric public (the mask-reading attacker), and the mask with client-seeded
decoy ties (`sweep.<arch>.ties: decoys`) against the mask-reading attacker. Columns: k against the update's non-zero
count, the share of batches whose visible values are all zero, token-set F1 against the batch's distinct tokens
(specials removed) for the three, the rows read off the mask alone and the fully hidden rows left unknown (index
ties, mask-reading), and how often the padded length was pinned exactly. Means over the batches, with their 95%
t-interval where there are at least two.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from scipy import stats
from tqdm.auto import tqdm

from selenc import data, metrics
from selenc.attacks.text.token_leakage import token_leakage
from selenc.config import load_params
from selenc.gradients import FlatLayout, client_update
from selenc.models import build_victim
from selenc.observed import observe
from selenc.selection import decoy_key, make_mask
from selenc.settings import derive_seed
from selenc.significance import ClientView, scores

REPO = Path(__file__).resolve().parent.parent


def mean_ci(values: list[float]) -> str:
    """Mean with the half-width of its 95% t-interval (none for a single value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{m:.2f}"
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return f"{m:.2f} ± {half:.2f}"


def run(victim, metric: str, ratio: float, n: int, batch_size: int, params) -> dict:
    special = set(victim.tokenizer.all_special_ids)
    name, table = victim.word_embedding()
    span = FlatLayout.of(victim.model).span(name)
    rows = []
    sentences = data.target_sentences()
    for start in tqdm(range(0, n, batch_size), desc=f"{victim.arch} {metric} {ratio}", file=sys.stderr, leave=False):
        batch = victim.text_batch(sentences[start : start + batch_size])
        update = client_update(victim, batch, params.update)
        view = ClientView(victim, batch, update, params.update, params.significance, start)
        s = scores(metric, view)
        mask = make_mask([s], ratio, "own")
        key = decoy_key(update.numel(), [(span.start, *table.shape)], derive_seed(start, "decoys"))
        decoy_mask = make_mask([s], ratio, "own", key)
        truth = sorted({t for t in batch.inputs[batch.attention_mask.bool()].tolist() if t not in special})
        read = token_leakage(observe(victim, update, mask, len(batch), params.update, metric), victim)
        blind = token_leakage(observe(victim, update, mask, len(batch), params.update, None), victim)
        decoyed = observe(victim, update, decoy_mask, len(batch), params.update, metric, ties="decoys")
        decoy = token_leakage(decoyed, victim)
        rows.append(
            {
                "k / nnz": int(mask.sum()) / int((update != 0).sum()),
                "visible all 0": float(not update[~mask].any()),
                "F1 ignoring mask": metrics.token_prf(blind.info["leaked_ids"], truth)["token_f1"],
                "F1 reading mask": metrics.token_prf(read.info["leaked_ids"], truth)["token_f1"],
                "F1 decoys": metrics.token_prf(decoy.info["leaked_ids"], truth)["token_f1"],
                "rows from mask": read.info["from_mask"],
                "unknown rows": read.info["unknown_rows"],
                "length exact": float(read.info["length"] == batch.inputs.shape[1]),
            }
        )
    return {key: [r[key] for r in rows] for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="gpt2,bert")
    parser.add_argument("--metrics", default="magnitude,embedding_rows")
    parser.add_argument("--ratios", default="0.01,0.05,0.2,0.5")
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = load_params(args.params)
    columns = ["k / nnz", "visible all 0", "F1 ignoring mask", "F1 reading mask", "F1 decoys", "rows from mask"]
    columns += ["unknown rows", "length exact"]
    print(f"{args.sentences} target sentences, batch {args.batch}, own mask, token_leakage mask-aware\n")
    print("| arch | metric | ρ | " + " | ".join(columns) + " |")
    print("|---|---|---:|" + "---:|" * len(columns))
    for arch in args.archs.split(","):
        victim = build_victim(arch, params)
        for metric in args.metrics.split(","):
            for ratio in (float(r) for r in args.ratios.split(",")):
                out = run(victim, metric, ratio, args.sentences, args.batch, params)
                cells = [mean_ci(out[c]) for c in columns]
                print(f"| {arch} | {metric} | {ratio:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
