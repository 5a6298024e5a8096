"""The package's structure: modules in a declared order of layers (every import points down), stages that no module
imports, and stages whose DVC params are exactly what changes their results."""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from selenc import cache
from selenc.settings import Sweep
from tests.conftest import REPO

# The layers, bottom first: a module may import only modules listed before it (and the packages it sits in).
ORDER = (
    # foundations: the params' shape, the data, storage, scores, top-k, notebook rendering
    "selenc.data",
    "selenc.settings",
    "selenc.cache",
    "selenc.metrics",
    "selenc.selection",
    "selenc.report",
    # the built-in models' builders and tokenizers (params names them like any user's)
    "selenc.zoo",
    # the victim and the client's update (one message, or one per round of a federated run)
    "selenc.models",
    "selenc.gradients",
    "selenc.observed",
    "selenc.significance",
    "selenc.rounds",
    "selenc.he",
    # the server's attacks: shared pieces, then one attack per module, then each modality's registry
    "selenc.attacks.lbfgs",
    "selenc.attacks.base",
    "selenc.attacks.image.adam",
    "selenc.attacks.image.labels",
    "selenc.attacks.image.matching",
    "selenc.attacks.image.dlg",
    "selenc.attacks.image.idlg",
    "selenc.attacks.image.ig",
    "selenc.attacks.image.linear",
    "selenc.attacks.image",
    "selenc.attacks.text.prior",
    "selenc.attacks.text.objective",
    "selenc.attacks.text.reading",
    "selenc.attacks.text.decoding",
    "selenc.attacks.text.token_leakage",
    "selenc.attacks.text.dager",
    "selenc.attacks.text.embedding",
    "selenc.attacks.text.tag",
    "selenc.attacks.text.lamp",
    "selenc.attacks.text",
    "selenc.attacks",
    # params validated against the registries; the theory's maths
    "selenc.config",
    "selenc.theory",
    # one trial, its row, and the engine that runs many
    "selenc.grid",
    "selenc.results",
    "selenc.trial",
    "selenc.cost",
    "selenc.executors",
    "selenc.engine",
    # reading the tables, and the search that reads them as it goes
    "selenc.stats",
    "selenc.search",
    "selenc.findings",
    "selenc.plots",
    # the stages (`python -m selenc.<stage>` in dvc.yaml)
    "selenc.sweep",
    "selenc.frontier",
    "selenc.theory_check",
    "selenc.compare",
    "selenc.guidelines",
)
# how trials run, never what they compute: no stage may list these (dvc would call results stale for nothing)
EXECUTION = ("workers", "executor", "dask_address", "dask_workers", "batch_trials", "time_limit_s")


def modules() -> set[str]:
    return {
        ".".join(("selenc", *p.relative_to(cache.PACKAGE_DIR).with_suffix("").parts)).removesuffix(".__init__")
        for p in cache.PACKAGE_DIR.rglob("*.py")
    } - {"selenc"}


def imports(module: str) -> set[str]:
    """The selenc modules `module` imports anywhere in its code, minus the packages it sits in."""
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    return cache._imports(module, cache._module_file(module)) - ancestors - {module}


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_modules() -> set[str]:
    """Modules that dvc.yaml runs as `python -m selenc.<name>`."""
    text = (REPO / "dvc.yaml").read_text()
    return {f"selenc.{m}" for m in re.findall(r"python -m selenc\.(\w+)", text)}


def test_every_module_has_its_place_and_imports_only_lower_layers():
    assert modules() == set(ORDER), "place every module in ORDER (and only existing ones)"
    rank = {m: i for i, m in enumerate(ORDER)}
    upward = [(m, d) for m in ORDER for d in sorted(imports(m)) if rank[d] >= rank[m]]
    assert not upward, f"imports that point up or sideways: {upward}"


def test_no_module_imports_a_stage():
    stages = stage_modules()
    assert {"selenc.sweep", "selenc.theory_check", "selenc.compare", "selenc.guidelines", "selenc.report"} <= stages
    importers = {(m, d) for m in modules() for d in imports(m) if d in stages}
    assert not importers, f"stage modules imported by other modules: {sorted(importers)}"


def test_the_layer_checks_catch_an_upward_import(tmp_path, monkeypatch):
    """The checks above read real source: a stats module that imported a stage would fail both."""
    fake = tmp_path / "selenc"
    for p in cache.PACKAGE_DIR.rglob("*.py"):
        dst = fake / p.relative_to(cache.PACKAGE_DIR)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(p.read_text())
    (fake / "stats.py").write_text((fake / "stats.py").read_text() + "\nfrom selenc.theory_check import run\n")
    monkeypatch.setattr(cache, "PACKAGE_DIR", fake)
    with pytest.raises(AssertionError, match=r"selenc\.stats', 'selenc\.theory_check"):
        test_every_module_has_its_place_and_imports_only_lower_layers()
    with pytest.raises(AssertionError, match=r"selenc\.theory_check"):
        test_no_module_imports_a_stage()


def test_stage_params_name_what_changes_results_and_no_execution_setting():
    assert set(EXECUTION) < set(Sweep.model_fields)
    stages = dvc_stages()
    for name, stage in stages.items():
        body = stage.get("do", stage)
        listed = body.get("params", [])
        assert not [p for p in listed if p.split(".")[-1] in EXECUTION], name
    sweep = stages["sweep"]
    assert sweep["foreach"] == stages["frontier"]["foreach"] == "${models}"  # one stage per model of params.yaml
    assert "attacks.${item.modality}" in sweep["do"]["params"] and "attacks" not in sweep["do"]["params"]
    assert "${item.source}" in sweep["do"]["deps"]  # a user's model file reruns its model's stages
    assert "compare" in stages and "attacks" not in stages


def _dvc(*args: str, cwd: Path) -> str:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_execution_settings_leave_dvc_status_clean_and_knobs_stale_only_their_stages(tmp_path):
    """dvc.yaml's stages with their real params lists (commands that do nothing, no files): after a repro, changing
    how trials run leaves every stage up to date; a text attack's knob stales the text sweeps, the theory stage and the
    guidelines (which state the budgets), never sweep@lenet."""
    stages = copy.deepcopy(dvc_stages())
    for stage in stages.values():
        body = stage.get("do", stage)
        for key in ("deps", "outs", "metrics", "plots"):
            body.pop(key, None)
        body["cmd"] = "python -c pass"
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    _dvc("init", "--no-scm", "-q", cwd=tmp_path)
    _dvc("repro", "-q", cwd=tmp_path)
    assert "up to date" in _dvc("status", cwd=tmp_path)

    raw["sweep"].update(workers=1, executor="dask", dask_workers=4, batch_trials=8, time_limit_s=60)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert "up to date" in _dvc("status", cwd=tmp_path)

    raw["attacks"]["text"]["tag"]["steps"] += 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    # the guidelines state each adversary's budget: they read the knobs too
    assert set(json.loads(_dvc("status", "--json", cwd=tmp_path))) == {
        "theory",
        "sweep@bert",
        "sweep@gpt2",
        "frontier@bert",
        "frontier@gpt2",
        "guidelines",
    }


BUILT_IN = re.compile(r"\b(lenet|cnn|bert|gpt-?2)\b", re.IGNORECASE)


def test_no_architecture_name_in_selenc_outside_the_built_in_builders():
    """What a model is comes from params (its entry) and from the module (`models.discover_layout`): no module of
    selenc but the built-in builders (`selenc.zoo`) names a built-in architecture, in code or prose."""
    named = [
        f"{p.relative_to(REPO)}:{i}: {line.strip()}"
        for p in sorted(cache.PACKAGE_DIR.rglob("*.py"))
        if p.name != "zoo.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if BUILT_IN.search(line)
    ]
    assert not named, "\n".join(named)
