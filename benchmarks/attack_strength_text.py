"""Strength and speed of the text attacks on the unprotected models (ratio 0, mask_aware, batch 1, params defaults).

Usage: python benchmarks/attack_strength_text.py [--sentences N] [--archs bert gpt2] [--threads 1]

For each victim (BERT: pretrained MiniLM; GPT-2: random weights, sizes from params) and each attack (token_leakage;
tag and lamp with restrict_vocab true and false, every other knob from params.yaml), attacks N Rotten Tomatoes
target sentences one at a time (B = 1) and prints one markdown table of means: ROUGE-1/2/L, token F1, exact match,
label accuracy and seconds per sentence. N < 40 takes a fixed label-balanced subset: target sentences 0, 20, 1, 21,
2, 22, … (the first 20 targets are negative, the last 20 positive). The reference text is the decoded ground-truth
token ids (specials removed, truncated to max_length), so scores compare like with like.

Then a speed table: ms per attack step (the objective's forward, the update with create_graph, the distance and its
backward to the dummy embeddings: one Adam step's work) against one plain forward + backward of the same model on the
same batch (token ids, every parameter's gradient), medians over repeats; the goal is a ratio ≤ 4. `--threads 1` is
the default: on a shared 2-core machine two intra-op threads run up to 30x slower when the other core is busy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from selenc import data, metrics
from selenc.attacks import ATTACKS
from selenc.attacks.text.decoding import Decoder
from selenc.attacks.text.objective import Distance
from selenc.attacks.text.reading import frame
from selenc.config import parse_params
from selenc.models import build_victim
from selenc.observed import observe_client
from selenc.settings import derive_seed

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [("token_leakage", None), ("tag", True), ("tag", False), ("lamp", True), ("lamp", False)]
COLUMNS = ["rouge1", "rouge2", "rougeL", "token_f1", "exact_match", "label_acc", "seconds"]


def subset(n: int) -> list[int]:
    """A fixed label-balanced order of the 40 targets: 0, 20, 1, 21, …"""
    order = [i for pair in zip(range(20), range(20, 40), strict=True) for i in pair]
    return order[:n]


def config_params(raw: dict, attack: str, restrict: bool | None):
    if restrict is not None:
        raw = yaml.safe_load(yaml.safe_dump(raw))
        raw["attacks"]["text"][attack]["restrict_vocab"] = restrict
    return parse_params(raw)


def strength(victim, params, attack: str, restrict: bool | None, indices: list[int], examples: dict) -> dict:
    tok = victim.tokenizer
    special = set(tok.all_special_ids)
    cfg = None if attack == "token_leakage" else params.attacks.of(attack)
    rows = []
    label = f"{victim.arch} {attack}" + ("" if restrict is None else f" restrict={restrict}")
    for i in tqdm(indices, desc=label, leave=False, file=sys.stderr):
        sentence = data.target_sentences()[i]
        batch = victim.text_batch([sentence])
        observed = observe_client(victim, batch, params.update)
        seed = derive_seed(params.study.seed, "bench", victim.arch, i)
        result = ATTACKS[attack](observed, victim, cfg, "mask_aware", seed)
        true_ids = [t for t in batch.inputs[0].tolist() if t not in special]
        truth = tok.decode(true_ids)
        row = metrics.text_scores(result.texts, [truth], result.token_ids, [true_ids])
        row["label_acc"] = metrics.label_accuracy(result.labels.cpu(), batch.labels.cpu())
        row["seconds"] = result.seconds
        rows.append(row)
        examples.setdefault(i, {"truth": truth})[label] = result.texts[0]
    return {k: float(np.mean([r[k] for r in rows])) for k in COLUMNS}


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def speed(victim, params, repeats: int) -> list[tuple]:
    """(arch, T, plain fwd+bwd ms, tag step ms, lamp step ms) on target sentence 1."""
    batch = victim.text_batch([data.target_sentences()[1]])
    observed = observe_client(victim, batch, params.update)
    decoder = Decoder(victim, 1, batch.inputs.shape[1], None, None)
    inner = decoder.init(torch.Generator().manual_seed(0)).requires_grad_()
    pre, suf = (decoder.table[torch.tensor(ids, dtype=torch.long)][None] for ids in frame(victim.tokenizer))
    model_params = [p for p in victim.model.parameters() if p.requires_grad]

    def plain() -> None:
        torch.autograd.grad(victim.loss(batch), model_params)

    def step(kind: str):  # one row through the CPU's path (plain autograd), as the attacks run it here
        distance = Distance([observed], victim, ["mask_aware"], kind, params.attacks.text.tag.alpha)
        row = distance.row()

        def run() -> None:
            embeds = torch.cat([pre, inner, suf], 1)
            loss = distance.value(embeds, batch.labels, batch.attention_mask, *row, eager=True)
            torch.autograd.grad(loss, [inner])

        return run

    base = _median_ms(plain, repeats)
    tag_ms, lamp_ms = _median_ms(step("l2_l1"), repeats), _median_ms(step("layer_cosine"), repeats)
    return [(victim.arch, batch.inputs.shape[1], base, tag_ms, lamp_ms)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=40, help="target sentences per cell (1..40)")
    parser.add_argument("--archs", nargs="+", default=["bert", "gpt2"], choices=["bert", "gpt2"])
    parser.add_argument("--attacks", nargs="+", default=["token_leakage", "tag", "lamp"], choices=list(ATTACKS))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per speed measurement")
    parser.add_argument("--examples", type=int, default=3, help="example reconstructions to print")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    args = parser.parse_args(argv)
    if not 1 <= args.sentences <= 40:
        parser.error("--sentences must lie in 1..40")
    torch.set_num_threads(args.threads)
    raw = yaml.safe_load(Path(args.params).read_text())
    params = parse_params(raw)
    indices = subset(args.sentences)
    print(f"# text attack strength: ratio 0, mask_aware, batch 1, {len(indices)} sentences, {args.threads} thread(s)")
    for name in ("tag", "lamp"):
        print(f"# attacks.{name}: {params.attacks.of(name)}")
    print()
    head = ["attack", "model", "restrict", "sentences", "ROUGE-1", "ROUGE-2", "ROUGE-L", "token F1", "exact"]
    print("| " + " | ".join([*head, "label acc", "s/sent"]) + " |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    examples: dict = {}
    speeds = []
    for arch in args.archs:
        victim = build_victim(arch, params, torch.device("cpu"))
        for attack, restrict in CONFIGS:
            if attack not in args.attacks:
                continue
            m = strength(victim, config_params(raw, attack, restrict), attack, restrict, indices, examples)
            print(
                f"| {attack} | {arch} | {'-' if restrict is None else str(restrict).lower()} | {len(indices)} | "
                + " | ".join(f"{m[k]:.3f}" for k in COLUMNS[:-1])
                + f" | {m['seconds']:.1f} |",
                flush=True,
            )
        speeds += speed(victim, params, args.repeats)
    print("\n## speed: ms per attack step vs one plain forward + backward (median, batch 1, target sentence 1)\n")
    print("| model | T | fwd+bwd ms | tag step ms | ratio | lamp step ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arch, length, base, tag_ms, lamp_ms in speeds:
        tag_ratio, lamp_ratio = tag_ms / base, lamp_ms / base
        print(f"| {arch} | {length} | {base:.1f} | {tag_ms:.1f} | {tag_ratio:.2f} | {lamp_ms:.1f} | {lamp_ratio:.2f} |")
    print("\n## examples\n")
    for i in indices[: args.examples]:
        ex = examples.get(i, {})
        print(f"- sentence {i}: truth: {ex.get('truth')!r}")
        for key, text in ex.items():
            if key != "truth":
                print(f"  - {key}: {text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
