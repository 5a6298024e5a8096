"""The grid: expansion order, slices, and which trials are the same computation (identity) or the same upload."""

from selenc.config import parse_params
from selenc.engine import trial_key
from selenc.grid import Trial, distinct, effective_metric, expand, update_fields, update_label
from tests.conftest import with_changes
from tests.test_engine import TINY


def test_grid_expansion_and_shared_ratio_endpoints(raw):
    tiny = with_changes(raw, **TINY)
    trials = expand(tiny, "lenet")
    assert len(trials) == 2 * 2 * 2  # metrics x ratios x trials
    assert len(distinct(trials)) == 6  # at ρ = 0 the mask is empty whatever the metric: those trials are run once
    assert len({trial_key(t, tiny) for t in trials}) == 6
    seeds = with_changes(raw, **(TINY | {"study.model_seeds": 3}))
    inits = expand(seeds, "lenet")
    assert len(inits) == 3 * len(trials) and [t.init for t in inits[:6]] == [0, 0, 1, 1, 2, 2]
    assert [t for t in inits if t.init == 0] == trials  # the first initialisation is the study's one of before


def test_slices_add_their_own_trials_once_after_the_main_grid(raw):
    grid = TINY["sweep.lenet"]
    slices = [
        {"attacks": ["idlg"], "metrics": ["magnitude"], "ratios": [0.5], "trials": 1},
        {"metrics": ["random"], "trials": 1},  # inside the main grid: adds nothing
        {"threat_models": ["zero_fill"], "ratios": [0.5]},  # the main grid's metrics and trials
    ]
    params = with_changes(raw, **(TINY | {"sweep.lenet": grid | {"slices": slices}}))
    trials = expand(params, "lenet")
    main = expand(with_changes(raw, **TINY), "lenet")
    assert trials[: len(main)] == main and len(set(trials)) == len(trials)
    extra = trials[len(main) :]
    assert [(t.attack, t.threat_model, t.metric, t.trial) for t in extra] == [
        ("idlg", "mask_aware", "magnitude", 0),
        ("dlg", "zero_fill", "random", 0),
        ("dlg", "zero_fill", "random", 1),
        ("dlg", "zero_fill", "magnitude", 0),
        ("dlg", "zero_fill", "magnitude", 1),
    ]


def trial(**changes) -> Trial:
    """A grid point: LeNet DLG, mask-aware, magnitude at 0.3, own mask, index ties, untrained, sample 0."""
    base = dict(
        arch="lenet",
        attack="dlg",
        threat_model="mask_aware",
        metric="magnitude",
        ratio=0.3,
        mask_source="own",
        ties="index",
        victim="untrained",
        update_kind="fedsgd",
        batch_size=1,
        local_steps=0,
        local_lr=0.0,
        rounds=1,
        mask_policy="fresh",
        clients=1,
        server_lr=0.0,
        init=0,
        trial=0,
    )
    return Trial(**(base | changes))


def test_identity_merges_exactly_the_trials_whose_mask_cannot_differ():
    assert effective_metric("magnitude", 0.0) == "none" and effective_metric("magnitude", 1.0) == "all"
    assert effective_metric("magnitude", 0.3) == "magnitude"
    # ρ = 0: no mask; the metric, mask source, ties and threat model cannot matter
    assert trial(ratio=0.0).identity() == trial(ratio=0.0, metric="random", mask_source="shared").identity()
    assert trial(ratio=0.0).identity() == trial(ratio=0.0, threat_model="zero_fill", ties="decoys").identity()
    # ρ = 1: everything hidden, but a zero-fill attacker still compares zeros: the threat model matters
    assert trial(ratio=1.0).identity() == trial(ratio=1.0, metric="random", mask_source="shared").identity()
    assert trial(ratio=1.0).identity() != trial(ratio=1.0, threat_model="zero_fill").identity()
    # in between every axis matters, the sample and the victim always
    for changed in (
        {"metric": "random"},
        {"mask_source": "shared"},
        {"ties": "decoys"},
        {"threat_model": "zero_fill"},
        {"trial": 1},
        {"victim": "trained"},
        {"init": 1},
        {"attack": "idlg"},
        {"batch_size": 4},
        {"update_kind": "fedavg", "local_steps": 1, "local_lr": 0.1},
    ):
        assert trial().identity() != trial(**changed).identity(), changed
    assert trial(ratio=0.0, trial=1).identity() != trial(ratio=0.0).identity()


def test_upload_is_what_the_client_sends_whoever_attacks_it():
    assert trial().upload() == trial(attack="linear", threat_model="zero_fill").upload()
    assert trial().upload() != trial(metric="random").upload()
    assert trial().upload() != trial(trial=1).upload() != trial(victim="trained").upload()
    assert trial().upload() != trial(init=1).upload()  # another initialisation: another model, another update
    assert distinct([trial(ratio=0.0), trial(ratio=0.0, metric="random"), trial()]) == [trial(ratio=0.0), trial()]


def test_the_update_axis_expands_each_entry_over_the_update_section(raw):
    raw["sweep"]["lenet"]["slices"] = [
        {
            "metrics": ["magnitude"],
            "ratios": [0.3],
            "attacks": ["dlg"],
            "trials": 2,
            "updates": [
                {},
                {"batch_size": 4},
                {"kind": "fedavg", "batch_size": 4, "local_steps": 3},
                {"local_lr": 9.0},
            ],
        }
    ]
    params = parse_params(raw)
    sliced = [t for t in expand(params, "lenet") if t.ratio == 0.3 and t.metric == "magnitude" and t.attack == "dlg"]
    updates = {(t.update_kind, t.batch_size, t.local_steps, t.local_lr) for t in sliced}
    # FedSGD ignores the local settings: {local_lr: 9} is the default update again, and its trials are not repeated
    assert updates == {("fedsgd", 1, 0, 0.0), ("fedsgd", 4, 0, 0.0), ("fedavg", 4, 3, 0.1)}
    assert len(sliced) == len(set(sliced)) and sum(t.batch_size == 4 for t in sliced) == 2 * 2  # 2 trials each
    fedavg = next(t for t in sliced if t.update_kind == "fedavg")
    expected = params.update.model_copy(update={"kind": "fedavg", "batch_size": 4, "local_steps": 3})
    assert update_fields(fedavg.update) == update_fields(expected)  # one round: the federation's keys unused
    assert update_label(*update_fields(fedavg.update)) == "fedavg B=4 3x0.1"
    # the main grid, which lists no updates, runs the update section alone
    assert {t.batch_size for t in expand(params, "lenet") if t.metric == "random"} == {1}
