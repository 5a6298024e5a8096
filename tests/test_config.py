"""params.yaml validation: every bad input fails early with one line naming key, value and what is allowed."""

import copy

import pytest

from selenc.config import (
    ARCH_MODALITY,
    ATTACK_MODALITY,
    METRICS,
    ConfigError,
    Params,
    derive_seed,
    load_params,
    parse_params,
)


def test_repo_params_load(params):
    assert isinstance(params, Params)
    assert set(ARCH_MODALITY) == {"lenet", "cnn", "bert", "gpt2"}
    for arch, modality in ARCH_MODALITY.items():
        grid = getattr(params.sweep, arch)
        assert all(ATTACK_MODALITY[a] == modality for a in grid.attacks)
        assert all(0.0 <= r <= 1.0 for r in grid.ratios)


def test_params_are_immutable(params):
    with pytest.raises(Exception, match="frozen"):
        params.study.seed = 3


def _set(raw: dict, dotted: str, value) -> dict:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return raw


DELETE = object()

# (key path, bad value, substrings the one-line message must contain)
BAD = [
    (
        "extra",
        1,
        [
            "params: extra: unknown key 'extra'",
            "allowed keys: study, models, update, significance, he, attacks, sweep, guidelines, theory",
        ],
    ),
    (
        "models.lenet.chanels",
        12,
        ["models.lenet.chanels: unknown key", "allowed keys: dataset, init, pretrain"],
    ),
    (
        "sweep.resnet",
        {},
        ["sweep.resnet: unknown key", "allowed keys: workers, time_limit_s, bound_grid, bound_iters, lenet, cnn, bert"],
    ),
    ("study.seed", "zero", ["study.seed:", "valid integer", "'zero'"]),
    ("study.seed", -1, ["study.seed:", "greater than or equal to 0", "-1"]),
    ("models.cnn.width", 16.5, ["models.cnn.width:", "valid integer", "16.5"]),
    ("sweep.lenet.trials", True, ["sweep.lenet.trials:", "valid integer", "True"]),
    ("sweep.lenet.trials", 0, ["sweep.lenet.trials:", "greater than 0", "got 0"]),
    ("models.cnn.depth", -1, ["models.cnn.depth:", "greater than 0", "-1"]),
    ("models.cnn.depth", 7, ["models.cnn.depth:", "less than or equal to 6", "7"]),
    ("sweep.lenet.ratios", [0.1, 1.5], ["sweep.lenet.ratios.1:", "less than or equal to 1", "1.5"]),
    ("sweep.cnn.ratios", [-0.1], ["sweep.cnn.ratios.0:", "greater than or equal to 0", "-0.1"]),
    ("sweep.bert.ratios", [], ["sweep.bert.ratios:", "at least 1 item", "[]"]),
    ("sweep.gpt2.ratios", [0.1, 0.1], ["sweep.gpt2.ratios:", "duplicate entries ['0.1']"]),
    ("sweep.lenet.metrics", ["magnitude", "gradnorm"], ["sweep.lenet.metrics.1:", "'random'", "'gradnorm'"]),
    ("sweep.cnn.attacks", ["deepleak"], ["sweep.cnn.attacks.0:", "'dlg'", "'deepleak'"]),
    (
        "sweep.lenet.attacks",
        ["dlg", "tag"],
        ["sweep.lenet.attacks: 'tag' is a text attack and lenet is an image model", "allowed: dlg, idlg, ig"],
    ),
    (
        "sweep.bert.attacks",
        ["ig"],
        [
            "sweep.bert.attacks: 'ig' is an image attack and bert is a text model",
            "allowed: token_leakage, tag, lamp",
        ],
    ),
    (
        "sweep.cnn.metrics",
        ["embedding_rows"],
        ["sweep.cnn.metrics: 'embedding_rows' needs a token embedding"],
    ),
    (
        "sweep.lenet.threat_models",
        ["oracle"],
        ["sweep.lenet.threat_models.0:", "'mask_aware' or 'zero_fill'"],
    ),
    ("sweep.lenet.mask_sources", "own", ["sweep.lenet.mask_sources:", "valid list", "'own'"]),
    ("models.lenet.dataset", "imagenet", ["models.lenet.dataset:", "'mnist' or 'cifar10'", "'imagenet'"]),
    ("models.lenet.dataset", "rotten_tomatoes", ["models.lenet.dataset:", "'mnist' or 'cifar10'"]),
    ("models.bert.dataset", "cifar10", ["models.bert.dataset:", "'rotten_tomatoes'", "'cifar10'"]),
    ("models.gpt2.n_head", 5, ["models.gpt2:", "n_embd=128 must be a multiple of n_head=5"]),
    ("models.gpt2.max_length", 100, ["models.gpt2:", "max_length=100 exceeds n_positions=64"]),
    ("models.lenet.pretrain.lr", 0, ["models.lenet.pretrain.lr:", "greater than 0"]),
    ("update.kind", "fedprox", ["update.kind:", "'fedsgd' or 'fedavg'", "'fedprox'"]),
    ("update.batch_size", 9, ["update.batch_size:", "less than or equal to 8", "9"]),
    ("update.kind", DELETE, ["update.kind: missing required key"]),
    ("study.device", "tpu", ["study.device:", "'auto', 'cpu' or 'cuda'", "'tpu'"]),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD, ids=[f"{k}={v!r}"[:60] for k, v, _ in BAD])
def test_bad_params_fail_with_one_clear_line(raw, key, value, expected):
    with pytest.raises(ConfigError) as info:
        parse_params(_set(raw, key, value))
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_bad_file_inputs(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("study:\n  seed: [1,\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML at line \d"):
        load_params(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping of sections, got list"):
        load_params(listed)


def test_error_names_the_file(tmp_path, raw):
    import yaml

    bad = copy.deepcopy(raw)
    bad["sweep"]["cnn"]["trials"] = -2
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"^.*exp\.yaml: sweep\.cnn\.trials: .*greater than 0 \(got -2\)$"):
        load_params(path)


def test_every_metric_and_attack_name_is_accepted_where_it_fits(raw):
    raw["sweep"]["bert"]["metrics"] = list(METRICS)
    raw["sweep"]["bert"]["attacks"] = [a for a, m in ATTACK_MODALITY.items() if m == "text"]
    raw["sweep"]["lenet"]["attacks"] = [a for a, m in ATTACK_MODALITY.items() if m == "image"]
    p = parse_params(raw)
    assert p.sweep.bert.metrics == list(METRICS)


def test_derive_seed_is_stable_and_separates_purposes():
    assert derive_seed(0, "model", "lenet") == derive_seed(0, "model", "lenet")
    seeds = {derive_seed(s, "model", a) for s in range(3) for a in ARCH_MODALITY}
    assert len(seeds) == 12
    assert all(0 <= s < 2**63 for s in seeds)


def test_paper_scale_params_are_valid_and_larger(params):
    from pathlib import Path

    paper = load_params(Path(__file__).resolve().parent.parent / "params-paper.yaml")
    assert paper.models.gpt2.n_embd == 768 and paper.attacks.ig.steps > params.attacks.ig.steps
    assert all(len(getattr(paper.sweep, a).ratios) > len(getattr(params.sweep, a).ratios) for a in ARCH_MODALITY)
