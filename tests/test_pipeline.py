"""End to end: `dvc repro` of the whole pipeline on a tiny params set, in a temporary copy of the repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from selenc.frontier import FOUND_COLUMNS
from selenc.guidelines import RECORD_KEYS
from selenc.results import COLUMNS
from selenc.stats import STRONGEST

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def tiny_params(raw: dict) -> dict:
    def grid(metrics, attacks, ratios, ties=("index",)):
        return {
            "metrics": metrics,
            "ratios": ratios,
            "attacks": attacks,
            "threat_models": ["mask_aware", "zero_fill"],
            "mask_sources": ["own"],
            "ties": list(ties),
            "victims": ["untrained"],
            "trials": 1,
        }

    raw["sweep"].update(
        {
            "workers": 2,
            "time_limit_s": 300,
            "lenet": grid(["random", "magnitude"], ["dlg"], [0.0, 0.5, 1.0])
            | {"slices": [{"attacks": ["idlg"], "metrics": ["magnitude"], "threat_models": ["mask_aware"]}]},
            "cnn": grid(["magnitude"], ["ig", "linear"], [0.0, 0.5])
            | {"slices": [{"victims": ["trained"], "attacks": ["ig"], "threat_models": ["mask_aware"]}]},
            "bert": grid(["magnitude"], ["token_leakage", "tag"], [0.0, 0.01]),
            "gpt2": grid(["embedding_rows"], ["token_leakage", "dager", "lamp"], [0.0, 0.01], ("index", "decoys")),
        }
    )
    fragment = yaml.safe_load((REPO / "examples" / "resnet.params.yaml").read_text())  # a user's model, params only
    for section, entries in fragment.items():
        raw[section].update(entries)
    raw["sweep"]["resnet"] = grid(["magnitude"], ["ig"], [0.0, 0.5])
    raw["sweep"].update(bound_grid=2, bound_iters=1)
    raw["frontier"].update(n_start=1, n_step=1, n_max=1)
    first = {"lenet": "dlg", "cnn": "ig", "bert": "token_leakage", "gpt2": "token_leakage", "resnet": "ig"}
    for arch, attack in first.items():
        raw["frontier"][arch].update(metrics=raw["frontier"][arch]["metrics"][:1], attacks=[attack], points=2, check=1)
    raw["significance"]["samples"] = 1
    raw["models"]["cnn"]["pretrain"].update(epochs=1, samples=64)
    for group in raw["attacks"].values():
        for knobs in group.values():
            knobs.update(steps=3, restarts=1)
    raw["theory"].update(grid=2, power_iters=1, samples=2)
    for case in raw["theory"]["cases"]:
        case.update(steps=2, trials=1, metrics=case["metrics"][:2], ratios=[0.0, 0.5])
    return raw


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("SELENC_DATA_DIR", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in [*files, "data"]:
        src, dst = REPO / rel, copy / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    (copy / "params.yaml").write_text(yaml.safe_dump(tiny_params(raw), sort_keys=False))
    assert run(["git", "init", "-q"], copy).returncode == 0
    built = run([sys.executable, "-m", "selenc.data", "build"], copy)
    assert built.returncode == 0, built.stderr
    repro = run([sys.executable, "-m", "dvc", "repro"], copy)
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    return copy


def test_repro_writes_every_report_table_and_metric(pipeline):
    reports = pipeline / "reports"
    for arch in ("lenet", "cnn", "bert", "gpt2", "resnet"):
        table = pd.read_csv(reports / "results" / "sweep" / f"{arch}.csv")
        assert list(table.columns) == list(COLUMNS) and (table.status == "ok").all(), table.error.tolist()
        metrics = json.loads((reports / "metrics" / f"sweep_{arch}.json").read_text())
        assert metrics["trials"] == len(table) and metrics["not_ok"] == 0
        assert {"psnr", "rouge1"} & set(metrics)
        for ext in ("ipynb", "html"):
            assert (reports / f"02_architecture_sweep_{arch}.{ext}").stat().st_size > 10_000
    theory = json.loads((reports / "metrics" / "theory.json").read_text())
    keys = {"t1_max_rel_err", "t2_checked", "t2_violations", "t2_tightness_median", "t3_far_spearman"}
    assert keys | {"t3_near_spearman", "t4_spearman"} <= set(theory)
    assert theory["t1_max_rel_err"] <= 1e-5 and theory["t2_checked"] > 0
    assert (reports / "01_theory_check.html").stat().st_size > 10_000
    assert {"t4_partial_spearman", "t4_per_ratio"} <= set(theory)
    attacks = json.loads((reports / "metrics" / "attacks.json").read_text())
    assert {"lenet", "cnn", "bert", "gpt2", "resnet"} == set(attacks)
    keys = {"zero_fill_gap", "zero_fill_overstated_cells", "shared_mask_gap", "decoy_gap", "support_threshold", "t4"}
    assert all(keys <= set(a) for a in attacks.values())
    assert attacks["lenet"]["zero_fill_gap"]["n_samples"] == 1 and attacks["lenet"]["zero_fill_gap"]["n_pairs"] == 2
    assert attacks["gpt2"]["decoy_gap"]["n_samples"] == 1 and attacks["gpt2"]["decoy_gap"]["min_p"] == 1.0
    assert attacks["cnn"]["trained_gap"]["n_samples"] == 1 and attacks["lenet"]["trained_gap"] is None
    summary = pd.read_csv(reports / "results" / "summary.csv")
    trained = summary[summary.victim == "trained"]
    assert set(trained.arch) == {"cnn"} and {"ig", STRONGEST} == set(trained.attack)
    assert {"idlg", "dlg", STRONGEST} <= set(summary[summary.arch == "lenet"].attack)
    assert (summary.ci_low <= summary["median"]).all() and (summary["median"] <= summary.ci_high).all()
    assert (summary.n_samples == 1).all() and "init" in pd.read_csv(reports / "results" / "sweep" / "lenet.csv")
    assert (reports / "results" / "paired.csv").is_file()
    for arch in ("lenet", "cnn", "bert", "gpt2", "resnet"):
        found = pd.read_csv(reports / "results" / "frontier" / f"{arch}.csv")
        assert list(found.columns) == list(FOUND_COLUMNS) and len(found) == 2 * len(set(found.ties))
        grid = {0.0, 0.5, 1.0} if arch in ("lenet", "cnn", "resnet") else {0.0, 0.005, 1.0}  # linear / log, 2 points
        assert set(pd.read_csv(reports / "results" / "frontier" / f"{arch}_probes.csv").ratio) <= grid
        assert json.loads((reports / "metrics" / f"frontier_{arch}.json").read_text())["trials"] > 0
        assert (reports / "figures" / f"frontier_{arch}.png").stat().st_size > 1000
    records = json.loads((reports / "guidelines.json").read_text())
    assert records and all(set(r) == set(RECORD_KEYS) for r in records)
    assert (reports / "guidelines.md").read_text().startswith("# Selective encryption guidelines")
    assert (reports / "figures" / "guidelines.png").stat().st_size > 1000
    executed = json.loads((reports / "04_guidelines.ipynb").read_text())
    assert all(c.get("outputs") is not None for c in executed["cells"] if c["cell_type"] == "code")


def test_second_repro_has_nothing_to_do(pipeline):
    again = run([sys.executable, "-m", "dvc", "repro"], pipeline)
    assert again.returncode == 0 and "Running stage" not in again.stdout


def test_a_failing_cell_fails_the_stage_and_leaves_no_report(pipeline):
    path = pipeline / "notebooks" / "04_guidelines.ipynb"
    book = json.loads(path.read_text())
    book["cells"].append(
        {
            "cell_type": "code",
            "id": "boom",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": "raise RuntimeError('a failing cell')",
        }
    )
    path.write_text(json.dumps(book))
    failed = run([sys.executable, "-m", "dvc", "repro", "guidelines"], pipeline)
    assert failed.returncode != 0
    assert "a failing cell" in failed.stderr + failed.stdout
    assert not (pipeline / "reports" / "04_guidelines.ipynb").exists()
    assert not (pipeline / "reports" / "04_guidelines.html").exists()


def test_a_user_model_added_by_params_alone_runs_through_every_stage(pipeline):
    """examples/resnet.py and its params fragment (nothing inside selenc): dvc repro ran its sweep with the
    BatchNorm mode in every row, its report, its frontier, and the guidelines cover it."""
    reports = pipeline / "reports"
    table = pd.read_csv(reports / "results" / "sweep" / "resnet.csv")
    assert (table.model_mode == "train").all() and (table.modality == "image").all() and len(table) > 0
    assert (reports / "02_architecture_sweep_resnet.html").stat().st_size > 10_000
    assert (reports / "results" / "frontier" / "resnet.csv").is_file()
    records = json.loads((reports / "guidelines.json").read_text())
    assert "resnet" in {r["arch"] for r in records}
    lock = yaml.safe_load((pipeline / "dvc.lock").read_text())["stages"]
    assert {"sweep@resnet", "frontier@resnet"} <= set(lock)
    assert any(d["path"] == "examples/resnet.py" for d in lock["sweep@resnet"]["deps"])
