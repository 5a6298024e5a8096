"""params.yaml validation: every bad input fails early with one line naming key, value and what is allowed."""

import copy
from pathlib import Path

import pytest

from selenc.attacks import MODALITY as ATTACK_MODALITY
from selenc.config import load_params, parse_params
from selenc.data import TARGET_POOL
from selenc.settings import DATASET_MODALITY, SEAL_MAX_BITS, ConfigError, Params, derive_seed
from selenc.significance import METRICS

REPO = Path(__file__).resolve().parent.parent


def test_repo_params_load(params):
    assert isinstance(params, Params)
    assert params.models.names == ("lenet", "cnn", "bert", "gpt2")
    for arch in params.models.names:
        grid = params.sweep.grid(arch)
        assert all(ATTACK_MODALITY[a] == params.models[arch].modality for a in grid.attacks)
        assert all(0.0 <= r <= 1.0 for r in grid.ratios)


def test_params_are_immutable(params):
    with pytest.raises(Exception, match="frozen"):
        params.study.seed = 3


def _set(raw: dict, dotted: str, value) -> dict:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
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
            "allowed keys: study, models, update, significance, he, attacks, sweep, guidelines, frontier, theory",
        ],
    ),
    (
        "models.lenet.chanels",
        12,
        [
            "models.lenet.chanels: unknown key",
            "allowed keys: builder, source, modality, dataset, tokenizer, max_length, mode, pretrain, init",
        ],
    ),
    ("sweep.resnet", {}, ["sweep.resnet.metrics: missing required key"]),
    ("sweep.lenet", DELETE, ["sweep.lenet: missing: model 'lenet' (models.lenet) needs a sweep grid"]),
    ("frontier.cnn", DELETE, ["frontier.cnn: missing: model 'cnn' (models.cnn) needs a frontier grid"]),
    ("theory.cases.0.arch", "vit", ["theory.cases.0.arch: 'vit' is not a model of models", "allowed: lenet, cnn"]),
    ("models", {}, ["models: no model"]),
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
    (
        "sweep.lenet.metrics",
        ["magnitude", "gradnorm"],
        ["sweep.lenet.metrics.1: 'gradnorm' is not a significance metric", "allowed: random, magnitude"],
    ),
    ("sweep.cnn.attacks", ["deepleak"], ["sweep.cnn.attacks.0: 'deepleak' is not an attack", "allowed: dlg, idlg"]),
    ("theory.cases.0.attack", "deepleak", ["theory.cases.0.attack: 'deepleak' is not an attack", "dlg"]),
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
            "allowed: tag, lamp, token_leakage, dager",
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
    ("models.lenet.dataset", "imagenet", ["models.lenet.dataset:", "'mnist', 'cifar10' or 'rotten_tomatoes'"]),
    ("models.lenet.dataset", "rotten_tomatoes", ["models.lenet:", "'rotten_tomatoes' is not image data", "mnist"]),
    ("models.bert.dataset", "cifar10", ["models.bert:", "'cifar10' is not text data", "rotten_tomatoes"]),
    ("models.bert.tokenizer", "sentencepiece", ["models.bert.tokenizer: 'sentencepiece'", "allowed: wordpiece, bpe"]),
    ("models.lenet.tokenizer", "bpe", ["models.lenet:", "tokenizer: an image model takes no tokenizer"]),
    ("models.gpt2.max_length", DELETE, ["models.gpt2:", "max_length: a text model needs max_length"]),
    ("models.lenet.mode", "infer", ["models.lenet.mode:", "'eval' or 'train'"]),
    ("models.gpt2.n_head", 5, ["models.gpt2:", "n_embd=128 must be a multiple of n_head=5"]),
    ("models.gpt2.max_length", 100, ["models.gpt2:", "max_length=100 exceeds n_positions=64"]),
    ("models.lenet.pretrain.lr", 0, ["models.lenet.pretrain.lr:", "greater than 0"]),
    ("update.kind", "fedprox", ["update.kind:", "'fedsgd' or 'fedavg'", "'fedprox'"]),
    ("update.batch_size", 65, ["update.batch_size:", "less than or equal to 64", "65"]),
    ("update.kind", DELETE, ["update.kind: missing required key"]),
    ("study.device", "tpu", ["study.device:", "'auto', 'cpu' or 'cuda'", "'tpu'"]),
    ("sweep.executor", "ray", ["sweep.executor:", "'local' or 'dask'", "'ray'"]),
    ("sweep.executor", DELETE, ["sweep.executor: missing required key"]),
    *[
        (
            "sweep.dask_address",
            address,
            [
                "sweep.dask_address: not a dask scheduler address",
                "allowed: tcp://host:port, tls://host:port, host:port or inproc://..., or null to start a LocalCluster",
                f"(got {address!r})",
            ],
        )
        for address in ("localhost", "http://10.0.0.5:8786", "tcp://10.0.0.5", "tcp://host:port", "")
    ],
    ("sweep.dask_address", 8786, ["sweep.dask_address:", "valid string", "8786"]),
    ("sweep.dask_workers", -1, ["sweep.dask_workers:", "greater than or equal to 0", "-1"]),
    ("sweep.batch_trials", -1, ["sweep.batch_trials:", "greater than or equal to 0", "got -1"]),
    (
        "sweep.lenet.slices",
        [{"metrics": ["random"]}, {"attacks": ["tag"]}],
        ["sweep.lenet.slices.1.attacks: 'tag' is a text attack and lenet is an image model", "allowed: dlg"],
    ),
    ("sweep.cnn.slices", [{"metrics": ["embedding_rows"]}], ["sweep.cnn.slices.0.metrics: 'embedding_rows' needs"]),
    ("sweep.lenet.slices", [{"trials": 0}], ["sweep.lenet.slices.0.trials:", "greater than 0"]),
    ("sweep.lenet.slices", [{"trials": 21}], ["sweep.lenet.slices.0.trials: 21 trials x update.batch_size 1"]),
    ("sweep.lenet.slices", [{"attack": ["dlg"]}], ["sweep.lenet.slices.0.attack: unknown key 'attack'", "metrics"]),
    ("sweep.lenet.victims", ["old"], ["sweep.lenet.victims.0: Input should be 'untrained' or 'trained'"]),
    (
        "models.cnn.pretrain.epochs",
        0,
        [
            "sweep.cnn.slices.2.victims: 'trained' needs a pretraining, but models.cnn.pretrain.epochs is 0",
            "allowed: untrained, or trained with models.cnn.pretrain.epochs > 0",
        ],
    ),
    ("guidelines.levels.strict.min_protected", 0.0, ["guidelines.levels.strict.min_protected:", "greater than 0"]),
    ("guidelines.levels.moderate.min_protected", 1.5, ["guidelines.levels.moderate.min_protected:", "less than or"]),
    (
        "guidelines.levels.strict.psnr_max",
        -0.5,
        [
            "guidelines.levels.strict.psnr_max: can never be met: the PSNR of images in [0, 1] is never negative",
            "allowed: >= 0 (got -0.5)",
        ],
    ),
    (
        "guidelines.levels.moderate.ssim_max",
        -1.5,
        ["guidelines.levels.moderate.ssim_max: can never be met: SSIM is never below -1; allowed: >= -1 (got -1.5)"],
    ),
    ("frontier.n_start", 30, ["frontier:", "n_start (30) exceeds n_max (20); allowed: n_start <= n_max"]),
    (
        "frontier.n_max",
        21,
        [
            "frontier.n_max: 21 trials x update.batch_size 1 = 21 samples, but the cifar10 target pool has only 20",
            "lower the trials or the batch size",
        ],
    ),
    ("frontier.lenet.metrics", ["embedding_rows"], ["frontier.lenet.metrics: 'embedding_rows' needs a token"]),
    ("frontier.cnn.attacks", ["dager"], ["frontier.cnn.attacks: 'dager' is a text attack and cnn is an image model"]),
    ("frontier.gpt2.metrics", ["entropy"], ["frontier.gpt2.metrics.0: 'entropy' is not a significance metric"]),
    ("frontier.bert.spacing", "cubic", ["frontier.bert.spacing:", "'linear' or 'log'"]),
    ("frontier.lenet.points", 1, ["frontier.lenet.points:", "greater than or equal to 2"]),
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


def test_the_registries_are_the_names_params_accept(raw, monkeypatch):
    """One declaration per name: a metric or attack registered by the code that implements it is accepted by params
    with no edit to config, and one taken out of its registry is refused."""
    from selenc import config

    raw["sweep"]["lenet"]["metrics"] = ["magnitude", "fresh_metric"]
    with pytest.raises(ConfigError, match="'fresh_metric' is not a significance metric"):
        parse_params(copy.deepcopy(raw))
    monkeypatch.setitem(config.METRICS, "fresh_metric", config.METRICS["magnitude"])
    assert parse_params(copy.deepcopy(raw)).sweep.lenet.metrics == ["magnitude", "fresh_metric"]
    monkeypatch.delitem(config.ATTACK_MODALITY, "linear")
    with pytest.raises(ConfigError, match=r"sweep\.lenet\.attacks\.1: 'linear' is not an attack"):
        parse_params(raw)


def test_attack_knobs_sit_under_the_modality_of_their_attack(params):
    """params.yaml's attack sections per modality hold only attacks of that modality (the sweeps list only theirs)."""
    for modality in ("image", "text"):
        names = type(getattr(params.attacks, modality)).model_fields
        assert names and all(ATTACK_MODALITY[a] == modality for a in names)
        assert all(params.attacks.of(a) is getattr(getattr(params.attacks, modality), a) for a in names)
    assert params.attacks.of("dager") is None and params.attacks.with_steps("dager", 3) == params.attacks
    assert params.attacks.with_steps("tag", 3).text.tag.steps == 3 and params.attacks.text.tag.steps != 3


def test_derive_seed_is_stable_and_separates_purposes():
    assert derive_seed(0, "model", "lenet") == derive_seed(0, "model", "lenet")
    seeds = {derive_seed(s, "model", a) for s in range(3) for a in ("lenet", "cnn", "bert", "gpt2")}
    assert len(seeds) == 12
    assert all(0 <= s < 2**63 for s in seeds)


def test_paper_scale_params_are_valid_and_larger(params):
    from pathlib import Path

    paper = load_params(Path(__file__).resolve().parent.parent / "params-paper.yaml")
    assert paper.models.gpt2.n_embd == 768 and paper.attacks.image.ig.steps > params.attacks.image.ig.steps
    assert paper.models.names == params.models.names
    assert all(len(paper.sweep.grid(a).ratios) > len(params.sweep.grid(a).ratios) for a in params.models.names)


def test_dask_settings_and_boundary_privacy_bounds_are_accepted(raw):
    for address in ("tcp://10.0.0.5:8786", "tls://scheduler.example.org:8786", "localhost:8786", "tcp://[::1]:8786"):
        assert parse_params(_set(raw, "sweep.dask_address", address)).sweep.dask_address == address
    assert parse_params(_set(raw, "sweep.dask_address", "inproc://10.0.0.5/1234/1")).sweep.dask_address
    p = parse_params(
        _set(_set(_set(raw, "sweep.executor", "dask"), "sweep.dask_address", None), "sweep.batch_trials", 4)
    )
    assert (p.sweep.executor, p.sweep.dask_address, p.sweep.batch_trials) == ("dask", None, 4)
    level = parse_params(
        _set(_set(raw, "guidelines.levels.strict.psnr_max", 0.0), "guidelines.levels.strict.ssim_max", -1)
    )
    assert (level.guidelines.levels["strict"].psnr_max, level.guidelines.levels["strict"].ssim_max) == (0.0, -1.0)


# (poly_modulus_degree, modulus chain): at and just past SEAL's 128-bit budget of each ring dimension
HE_CHAINS = [
    (4096, [40, 20, 20, 29]),
    (4096, [40, 20, 20, 30]),
    (4096, [60, 40, 40, 60]),
    (8192, [60, 40, 40, 60]),
    (8192, [60, 40, 40, 40, 38]),
    (8192, [60, 40, 40, 40, 39]),
    (8192, [60, 40, 40, 40, 40, 60]),
    (16384, [60, *[40] * 8, 58]),
    (16384, [60, *[40] * 8, 59]),
    (32768, [60] * 14 + [41]),
    (32768, [60] * 14 + [42]),
]


@pytest.mark.parametrize(("n", "chain"), HE_CHAINS, ids=[f"N={n}-{sum(c)}bits" for n, c in HE_CHAINS])
def test_he_chain_is_accepted_exactly_when_tenseal_accepts_it(raw, n, chain):
    import tenseal

    raw["he"].update(poly_modulus_degree=n, coeff_mod_bit_sizes=chain, scale_bits=chain[1])
    try:
        tenseal.context(tenseal.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=chain)
        seal_accepts = True
    except ValueError:
        seal_accepts = False
    try:
        parse_params(raw)
        config_accepts = True
    except ConfigError as exc:
        config_accepts = False
        assert str(exc) == (
            f"params: he.coeff_mod_bit_sizes: the modulus chain {chain} has {sum(chain)} bits; SEAL allows at most "
            f"{SEAL_MAX_BITS[n]} bits at poly_modulus_degree={n} (128-bit security): use fewer or smaller primes or "
            "a larger poly_modulus_degree"
        )
    assert config_accepts == seal_accepts


def test_duplicate_yaml_keys_name_their_line_and_section(tmp_path):
    lines = (REPO / "params.yaml").read_text().splitlines()
    cases = [  # (insert after the first line starting with this; None: at the end, the line, the message)
        ("  seed: 0 ", "  seed: 1", "duplicate key 'seed' in study"),
        ("    trials: 5", "    trials: 6", "duplicate key 'trials' in sweep.lenet"),  # the first trials: sweep.lenet
        ("      steps: 300 ", "      steps: 10", "duplicate key 'steps' in theory.cases.0"),
        (None, "study: {}", "duplicate key 'study' at the top level"),
    ]
    for anchor, extra, expected in cases:
        index = len(lines) - 1 if anchor is None else next(i for i, ln in enumerate(lines) if ln.startswith(anchor))
        path = tmp_path / "dup.yaml"
        path.write_text("\n".join([*lines[: index + 1], extra, *lines[index + 1 :]]) + "\n")
        with pytest.raises(ConfigError) as info:
            load_params(path)
        assert str(info.value) == f"{path}: line {index + 2}: {expected}; each key may appear once"


def _set_pool(raw: dict, batch: int, **trials: int) -> dict:
    raw["update"]["batch_size"] = batch
    raw["frontier"]["n_max"] = raw["frontier"]["n_start"] = 5  # the frontier's samples: checked in BAD
    for grid in (g for g in raw["sweep"].values() if isinstance(g, dict)):  # the slices' own batch sizes: checked below
        for piece in grid.get("slices", []):
            piece.pop("updates", None)
    for where, n in trials.items():
        if where.startswith("case"):
            raw["theory"]["cases"][int(where[4:])]["trials"] = n
        else:
            raw["sweep"][where]["trials"] = n
    return raw


def test_trials_times_batch_must_fit_the_target_pool(raw):
    assert set(TARGET_POOL) == set(DATASET_MODALITY)
    small = {"lenet": 1, "cnn": 1, "bert": 1, "gpt2": 1, "case0": 1, "case1": 1}
    full = {**small, "lenet": 10, "cnn": 10, "bert": 20, "case1": 20}  # exactly the pools at batch size 2
    parse_params(_set_pool(copy.deepcopy(raw), 2, **full))
    bad = [  # (trials changed, key path, samples, dataset) at batch size 2; case 0 is lenet, case 1 gpt2
        ({"lenet": 11}, "sweep.lenet", 11, "cifar10"),
        ({"bert": 21}, "sweep.bert", 21, "rotten_tomatoes"),
        ({"case0": 11}, "theory.cases.0", 11, "cifar10"),
        ({"case1": 21}, "theory.cases.1", 21, "rotten_tomatoes"),
    ]
    for change, where, trials, dataset in bad:
        with pytest.raises(ConfigError) as info:
            parse_params(_set_pool(copy.deepcopy(raw), 2, **{**small, **change}))
        assert str(info.value) == (
            f"params: {where}.trials: {trials} trials x update.batch_size 2 = {2 * trials} samples, but the {dataset} "
            f"target pool has only {TARGET_POOL[dataset]}; lower the trials or the batch size"
        )
    raw["models"]["cnn"]["dataset"] = "mnist"
    with pytest.raises(ConfigError, match=r"^params: sweep\.cnn\.trials: 7 trials x .* = 21 samples, but the mnist "):
        parse_params(_set_pool(raw, 3, **{**small, "cnn": 7}))
    # a grid's updates: each batch size is checked, and the key that sets it is named
    raw = _set_pool(copy.deepcopy(raw), 1, **small)
    raw["sweep"]["lenet"]["trials"] = 5
    raw["sweep"]["lenet"]["updates"] = [{}, {"batch_size": 4}]
    parse_params(raw)  # 5 clients x 4 = the pool
    raw["sweep"]["lenet"]["updates"] = [{}, {"batch_size": 5}]
    with pytest.raises(
        ConfigError, match=r"^params: sweep\.lenet\.trials: 5 trials x sweep\.lenet\.updates\.1\.batch_size 5 = 25"
    ):
        parse_params(raw)
    raw["sweep"]["lenet"]["updates"] = [{}]
    raw["sweep"]["lenet"]["slices"] = [{"trials": 3, "updates": [{"kind": "fedavg", "batch_size": 8}]}]
    with pytest.raises(
        ConfigError,
        match=r"^params: sweep\.lenet\.slices\.0\.trials: 3 trials x "
        r"sweep\.lenet\.slices\.0\.updates\.0\.batch_size 8 = 24",
    ):
        parse_params(raw)
