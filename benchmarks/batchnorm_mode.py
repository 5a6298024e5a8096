"""What BatchNorm's mode changes: the example ResNet (examples/resnet.py) unprotected, train-mode forward against eval.

Usage: python benchmarks/batchnorm_mode.py [--params params.yaml] [--trials 3] [--attacks ig,linear,dlg]

Merges examples/resnet.params.yaml into the params (the README's two steps), runs the ResNet's sweep at ρ = 0 once
with `mode: train` (BatchNorm on the client batch's own statistics) and once with `mode: eval` (running statistics),
every attack with the params' budgets on the same samples, and prints one markdown table: per attack and mode the
per-sample PSNR, its median and, per privacy level, the samples it breaks (not protected: `stats.protected`; an
attack that breaks none is not a valid baseline at that level). Trials go to a temporary cache: nothing of the
study changes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from selenc import stats
from selenc.config import parse_params
from selenc.engine import run_sweep

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--attacks", default="ig,linear,dlg")
    args = parser.parse_args()
    raw = yaml.safe_load(Path(args.params).read_text())
    for section, entries in yaml.safe_load((REPO / "examples" / "resnet.params.yaml").read_text()).items():
        raw[section].update(entries)
    grid = {"ratios": [0.0], "metrics": ["magnitude"], "attacks": args.attacks.split(","), "trials": args.trials}
    raw["sweep"]["resnet"].update(grid)
    levels = parse_params(raw).guidelines.levels
    print(f"| mode | attack | PSNR per sample (dB) | median | {' | '.join(f'broken, {n}' for n in levels)} |")
    print("|---|---|---|---:|" + "---:|" * len(levels))
    with tempfile.TemporaryDirectory() as cache:
        for mode in ("train", "eval"):
            raw["models"]["resnet"]["mode"] = mode
            table = run_sweep(parse_params(raw), "resnet", cache_dir=Path(cache), progress=False)
            for attack, rows in table.groupby("attack", sort=False):
                rows = rows.sort_values("trial")
                shown = ", ".join(f"{p:.1f}" for p in rows.psnr)
                broken = [f"{int((~stats.protected(rows, level)).sum())}/{len(rows)}" for level in levels.values()]
                print(f"| {mode} | {attack} | {shown} | {rows.psnr.median():.1f} | {' | '.join(broken)} |")


if __name__ == "__main__":
    main()
