"""The study's grid for one architecture: metrics × ratios × attacks × threat models × mask sources × trials.

One trial = real sample(s) -> client update -> significance scores -> mask -> observed update -> attack -> metrics
and φ(S). Trials run in forked worker processes (one torch thread each) with a hard per-trial time limit; a failed
or timed-out trial becomes a row with `status` and `error` instead of stopping the sweep. Every finished trial is
cached as JSON under a hash of everything its result depends on (its grid point, the params it reads and the source
of the modules it runs), so a killed sweep resumes where it stopped and its table equals an uninterrupted run's.
HE cost is measured once per (arch, ratio) with real CKKS encryption of a real update: it depends on the number of
encrypted coordinates k = ⌈ρ·n⌉ only, not on which coordinates a metric picked.

    python -m selenc.sweep --arch lenet          # writes reports/results/lenet.csv
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from selenc import data
from selenc.config import ARCH_MODALITY, Params, derive_seed, load_params

REPO_ROOT = data.REPO_ROOT
CACHE_DIR = REPO_ROOT / ".selenc-cache" / "trials"
# Modules whose source a trial's result depends on: editing one invalidates the cached trials.
TRIAL_MODULES = (
    "config.py",
    "data.py",
    "models.py",
    "gradients.py",
    "significance.py",
    "selection.py",
    "metrics.py",
    "attacks/base.py",
    "attacks/image.py",
    "attacks/text.py",
    "sweep.py",
    "theory.py",
)
IMAGE_COLUMNS = ("psnr", "ssim", "mse", "label_acc")
TEXT_COLUMNS = ("rouge1", "rouge2", "rougeL", "token_f1", "exact_match", "label_acc")
COLUMNS = (
    "arch",
    "dataset",
    "attack",
    "threat_model",
    "metric",
    "ratio",
    "mask_source",
    "trial",
    "seed",
    "status",
    "error",
    "psnr",
    "ssim",
    "mse",
    "label_acc",
    "rouge1",
    "rouge2",
    "rougeL",
    "token_f1",
    "exact_match",
    "phi",
    "b1_mismatch",
    "b1_lipschitz",
    "b1_bound",
    "b1_error",
    "b1_tightness",
    "b1_violated",
    "k",
    "n",
    "he_ciphertexts",
    "he_bytes",
    "he_encrypt_s",
    "attack_s",
    "trial_s",
    "reconstruction",
)


@dataclass(frozen=True)
class Trial:
    """One grid point of one architecture's sweep."""

    arch: str
    attack: str
    threat_model: str
    metric: str
    ratio: float
    mask_source: str
    trial: int

    @property
    def effective_metric(self) -> str:
        """At ρ = 0 and ρ = 1 the mask does not depend on the metric: those trials are run once and shared."""
        return {0.0: "none", 1.0: "all"}.get(self.ratio, self.metric)


def expand(params: Params, arch: str) -> list[Trial]:
    """All trials of `arch`'s grid, in a fixed order (the order of the results table)."""
    g = getattr(params.sweep, arch)
    return [
        Trial(arch, attack, threat, metric, float(ratio), source, t)
        for attack, threat, metric, ratio, source, t in itertools.product(
            g.attacks, g.threat_models, g.metrics, g.ratios, g.mask_sources, range(g.trials)
        )
    ]


def _source_fingerprint() -> str:
    h = hashlib.sha256()
    for rel in TRIAL_MODULES:
        path = Path(__file__).parent / rel
        h.update(rel.encode() + (path.read_bytes() if path.exists() else b""))
    return h.hexdigest()


def trial_config(trial: Trial, params: Params) -> dict:
    """Everything a trial's result depends on (the cache key is its hash)."""
    cfg = asdict(trial) | {"metric": trial.effective_metric}
    if trial.ratio in (0.0, 1.0):  # the mask is empty or full whichever clients agreed on it
        cfg["mask_source"] = "any"
    if trial.ratio == 0.0:  # nothing hidden: the zero-fill and the mask-aware attacker see the same update
        cfg["threat_model"] = "any"
    attack_cfg = getattr(params.attacks, trial.attack, None)
    return {
        "trial": cfg,
        "seed": params.study.seed,
        "model": getattr(params.models, trial.arch).model_dump(),
        "update": params.update.model_dump(),
        "significance": params.significance.model_dump(),
        "attack": attack_cfg.model_dump() if attack_cfg is not None else None,
        "bound": {"grid": params.sweep.bound_grid, "iters": params.sweep.bound_iters},
        "source": _source_fingerprint(),
    }


def trial_key(trial: Trial, params: Params) -> str:
    return hashlib.sha256(json.dumps(trial_config(trial, params), sort_keys=True).encode()).hexdigest()[:20]


# --- one trial ---------------------------------------------------------------------------------------------------
def _batch(victim, dataset: str, indices: list[int]):
    if victim.modality == "image":
        pool = data.target_images(dataset)
        idx = [i % len(pool) for i in indices]
        return victim.image_batch(data.Images(pool.images[idx], pool.labels[idx]))
    pool = data.target_sentences()
    return victim.text_batch([pool[i % len(pool)] for i in indices])


def pool_size(victim, dataset: str) -> int:
    return len(data.target_images(dataset)) if victim.modality == "image" else len(data.target_sentences())


def run_trial(trial: Trial, params: Params, victim) -> dict:
    """Sample -> update -> scores -> mask -> observed update -> attack -> metrics, φ(S) and (B1): one results row."""
    from selenc.attacks import ATTACKS
    from selenc.attacks.base import PublicInfo
    from selenc.gradients import FlatLayout, client_update
    from selenc.metrics import image_scores, text_scores
    from selenc.selection import ObservedUpdate, make_mask
    from selenc.significance import ClientView, client_scores
    from selenc.theory import bound, phi, significance, text_point

    start = time.perf_counter()
    cfg = getattr(params.models, trial.arch)
    b = params.update.batch_size
    seed = derive_seed(params.study.seed, "trial", trial.arch, trial.trial)
    own = list(range(trial.trial * b, trial.trial * b + b))
    batch = _batch(victim, cfg.dataset, own)
    update = client_update(victim, batch, params.update)
    metric = trial.effective_metric
    if metric in ("none", "all"):
        mask = torch.full((update.numel(),), metric == "all", dtype=torch.bool)
    else:
        clients = 1 if trial.mask_source == "own" else params.significance.shared_clients
        batches = [batch] + [_batch(victim, cfg.dataset, [i + j * b for i in own]) for j in range(1, clients)]
        per_client = client_scores(metric, victim, batches, params.update, params.significance, seed)
        mask = make_mask(per_client, trial.ratio, trial.mask_source)
    # φ(S): the protected share of the distance-based significance (computed on the client's side, theory.md)
    s = significance(ClientView(victim, batch, update, params.update, params.significance, seed))
    info = PublicInfo(trial.arch, len(batch), victim.num_classes, victim.input_shape, params.update)
    observed = ObservedUpdate.observe(update, mask, FlatLayout.of(victim.model), info.as_metadata())
    del update  # from here on the attack has only the server's view
    attack_cfg = getattr(params.attacks, trial.attack, None)
    result = ATTACKS[trial.attack](observed, victim, attack_cfg, trial.threat_model, seed)
    row = {
        "status": "ok",
        "error": "",
        "phi": phi(s, mask),
        "k": int(mask.sum()),
        "n": int(mask.numel()),
        "attack_s": result.seconds,
        "seed": seed,
    }
    if victim.modality == "image":
        row |= {
            k: v
            for k, v in image_scores(result.images, batch.inputs, result.labels, batch.labels).items()
            if k in IMAGE_COLUMNS
        }
        row["reconstruction"] = _encode_images(result.images)
    else:
        ids = [
            [t for t, m in zip(seq.tolist(), am.tolist(), strict=True) if m]
            for seq, am in zip(batch.inputs, batch.attention_mask, strict=True)
        ]
        special = set(victim.tokenizer.all_special_ids)
        true_ids = [[t for t in seq if t not in special] for seq in ids]
        truth = [victim.tokenizer.decode(seq) for seq in true_ids]
        scores = text_scores(result.texts, truth, result.token_ids, true_ids)
        row |= {k: v for k, v in scores.items() if k in TEXT_COLUMNS}
        row["label_acc"] = float((result.labels.cpu().sort().values == batch.labels.cpu().sort().values).float().mean())
        row["reconstruction"] = " || ".join(result.texts)
    # (B1) at the attack's output, on the client's side (true labels; text: only when the recovered length matches)
    x_hat = result.images if victim.modality == "image" else text_point(victim, batch, result.token_ids)
    if x_hat is not None:
        b1 = bound(victim, batch, params.update, x_hat, mask, params.sweep.bound_grid, params.sweep.bound_iters, seed)
        row |= b1.as_row()
    row["trial_s"] = time.perf_counter() - start
    return row


def _encode_images(images: torch.Tensor) -> str:
    """Reconstructed images as base64 uint8 (B, C, H, W), small enough to live in the results table."""
    arr = (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return f"{'x'.join(map(str, arr.shape))}:" + base64.b64encode(arr.tobytes()).decode()


def decode_images(text: str) -> np.ndarray:
    """Inverse of the table's `reconstruction` cell for images: float (B, C, H, W) in [0, 1]."""
    shape, blob = text.split(":", 1)
    return np.frombuffer(base64.b64decode(blob), dtype=np.uint8).reshape(tuple(map(int, shape.split("x")))) / 255.0


# --- the engine ----------------------------------------------------------------------------------------------------
def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True))
    tmp.replace(path)  # atomic: a killed sweep never leaves a half-written cache entry


def _child(trial: Trial, params: Params, victim, path: Path) -> None:
    torch.set_num_threads(1)
    try:
        row = run_trial(trial, params, victim)
    except Exception as exc:  # a failing trial is a row, not a crash of the sweep
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        row = {"status": "error", "error": f"{type(exc).__name__}: {exc} ({Path(tb.filename).name}:{tb.lineno})"}
    _write_json(path, row)


def run_sweep(
    params: Params, arch: str, cache_dir: Path = CACHE_DIR, victim=None, progress: bool = True
) -> pd.DataFrame:
    """Run (or resume) `arch`'s grid and return the results table, one row per trial."""
    from selenc.models import build_victim

    trials = expand(params, arch)
    folder = Path(cache_dir) / arch
    folder.mkdir(parents=True, exist_ok=True)
    keys = [trial_key(t, params) for t in trials]
    todo = deque(dict.fromkeys(k for k in keys if not (folder / f"{k}.json").exists()))
    by_key = dict(zip(keys, trials, strict=True))
    if todo:
        victim = victim or build_victim(arch, params)
        need = params.update.batch_size * getattr(params.sweep, arch).trials
        if need > pool_size(victim, getattr(params.models, arch).dataset):
            raise ValueError(
                f"sweep.{arch}.trials x update.batch_size = {need} samples, but the target pool has only "
                f"{pool_size(victim, getattr(params.models, arch).dataset)}; lower the trials or the batch size"
            )
    workers = params.sweep.workers or os.cpu_count() or 1
    time_limit = params.sweep.time_limit_s
    ctx = multiprocessing.get_context("fork")
    running: dict[str, tuple] = {}
    unique = len(set(keys))
    with tqdm(
        total=unique,
        initial=unique - len(todo),
        desc=f"sweep {arch}",
        disable=not progress,
        unit="trial",
        dynamic_ncols=True,
    ) as bar:
        while todo or running:
            while todo and len(running) < workers:
                key = todo.popleft()
                proc = ctx.Process(target=_child, args=(by_key[key], params, victim, folder / f"{key}.json"))
                proc.start()
                running[key] = (proc, time.monotonic())
            time.sleep(0.05)
            for key, (proc, started) in list(running.items()):
                if proc.is_alive() and time.monotonic() - started <= time_limit:
                    continue
                if proc.is_alive():
                    proc.kill()
                    proc.join()
                    _write_json(
                        folder / f"{key}.json",
                        {"status": "timeout", "error": f"trial exceeded the {time_limit:.0f} s time limit"},
                    )
                else:
                    proc.join()
                    if not (folder / f"{key}.json").exists():
                        _write_json(
                            folder / f"{key}.json",
                            {"status": "error", "error": f"worker died with exit code {proc.exitcode}"},
                        )
                del running[key]
                bar.update()
    return results_table(params, arch, trials, keys, folder, victim)


def he_cost(params: Params, arch: str, ratio: float, get_victim: Callable, folder: Path) -> dict:
    """Real CKKS encryption of the first sample's update at ratio ρ (cached): ciphertexts, wire bytes, seconds."""
    from selenc.gradients import client_update
    from selenc.he import HEClient
    from selenc.selection import top_k_mask

    cfg = getattr(params.models, arch)
    key = hashlib.sha256(
        json.dumps(
            {
                "he": params.he.model_dump(),
                "model": cfg.model_dump(),
                "ratio": ratio,
                "seed": params.study.seed,
                "update": params.update.model_dump(),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:20]
    path = folder / f"he-{key}.json"
    if not path.exists():
        victim = get_victim()
        batch = _batch(victim, cfg.dataset, list(range(params.update.batch_size)))
        update = client_update(victim, batch, params.update)
        enc = HEClient(params.he).encrypt(update, top_k_mask(update.abs(), ratio))  # cost depends on k only
        _write_json(
            path,
            {
                "he_ciphertexts": enc.cost.ciphertexts,
                "he_bytes": enc.cost.wire_bytes,
                "he_encrypt_s": enc.cost.encrypt_s,
            },
        )
    return json.loads(path.read_text())


def results_table(
    params: Params, arch: str, trials: list[Trial], keys: list[str], folder: Path, victim=None
) -> pd.DataFrame:
    """One row per trial, in grid order, from the cache; HE cost joined per ratio."""
    from selenc.models import build_victim

    dataset = getattr(params.models, arch).dataset
    get_victim = functools.cache(lambda: victim or build_victim(arch, params))  # built only if a cost is missing
    costs = {r: he_cost(params, arch, r, get_victim, folder) for r in sorted({t.ratio for t in trials})}
    rows = []
    for trial, key in zip(trials, keys, strict=True):
        cached = json.loads((folder / f"{key}.json").read_text())
        rows.append({c: None for c in COLUMNS} | asdict(trial) | {"dataset": dataset} | costs[trial.ratio] | cached)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def stage_metrics(table: pd.DataFrame, arch: str) -> dict:
    """The sweep stage's metrics JSON: trial counts and mean attack success per attack, metric and ratio
    (mask-aware, own mask), so `dvc metrics diff` / `dvc exp show` compare experiments cell by cell."""
    from selenc.plots import finite, success_column

    col, _ = success_column(arch)
    ok = finite(table, col)
    main = ok[(ok.threat_model == "mask_aware") & (ok.mask_source == "own")]
    cells = main.groupby(["attack", "metric", "ratio"])[col].mean()
    out: dict = {"trials": len(table), "not_ok": int((table.status != "ok").sum()), col: {}}
    for (attack, metric, ratio), value in cells.items():
        out[col].setdefault(attack, {}).setdefault(metric, {})[f"r{ratio:g}"] = round(float(value), 4)
    return out


def plot_data(table: pd.DataFrame, arch: str) -> pd.DataFrame:
    """Mean attack success per (attack, metric, ratio), mask-aware and own mask: the data of `dvc plots`."""
    from selenc.plots import finite, success_column

    col, _ = success_column(arch)
    ok = finite(table, col)
    main = ok[(ok.threat_model == "mask_aware") & (ok.mask_source == "own")]
    return main.groupby(["attack", "metric", "ratio"], as_index=False)[col].mean().round(4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selenc.sweep", description="Run one architecture's sweep.")
    parser.add_argument("--arch", required=True, choices=list(ARCH_MODALITY))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--reports", type=Path, default=REPO_ROOT / "reports", help="where results/, metrics/ and plots/ go"
    )
    args = parser.parse_args(argv)
    params = load_params(args.params)
    table = run_sweep(params, args.arch)
    reports = args.reports
    for sub in ("results", "metrics", "plots"):
        (reports / sub).mkdir(parents=True, exist_ok=True)
    table.to_csv(reports / "results" / f"{args.arch}.csv", index=False)
    (reports / "metrics" / f"sweep_{args.arch}.json").write_text(json.dumps(stage_metrics(table, args.arch), indent=2))
    plot_data(table, args.arch).to_csv(reports / "plots" / f"sweep_{args.arch}.csv", index=False)
    print(f"{len(table)} trials -> {reports}/results/{args.arch}.csv ({(table.status != 'ok').sum()} not ok)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
