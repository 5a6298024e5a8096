"""Guidelines: protected trials, the smallest protecting ratio, and the recommended strategy (known small tables)."""

import pandas as pd

from selenc.guidelines import RECORD_KEYS, guidelines, min_protecting_ratio, protected, strategy_table


def rows(arch, attack, metric, psnr_by_ratio, trials=2, ssim=0.1):
    return [
        {
            "arch": arch,
            "attack": attack,
            "metric": metric,
            "ratio": r,
            "trial": t,
            "status": "ok",
            "threat_model": "mask_aware",
            "mask_source": "own",
            "ties": "index",
            "psnr": p,
            "ssim": ssim,
            "rouge1": None,
            "token_f1": None,
            "he_encrypt_s": r * 10,
            "he_bytes": int(r * 1000) + 5,
        }
        for r, p in psnr_by_ratio.items()
        for t in range(trials)
    ]


def test_protection_needs_every_bound(params):
    strict = params.guidelines.levels["strict"]
    table = pd.DataFrame(
        rows("lenet", "dlg", "magnitude", {0.1: 10.0}) + rows("lenet", "dlg", "random", {0.1: 10.0}, ssim=0.9)
    )
    assert protected(table, strict).tolist() == [True, True, False, False]
    table.loc[0, "status"] = "timeout"
    assert not protected(table, strict)[0]


def test_min_ratio_requires_every_larger_ratio(params):
    strict = params.guidelines.levels["strict"]
    lucky = pd.DataFrame(rows("lenet", "dlg", "random", {0.0: 35.0, 0.05: 11.0, 0.1: 25.0, 0.5: 9.0, 1.0: 8.0}))
    assert min_protecting_ratio(lucky, strict, 0.9) == 0.5  # 0.05 passes by luck but 0.1 fails again
    never = pd.DataFrame(rows("lenet", "dlg", "random", {0.0: 35.0, 1.0: 20.0}))
    assert min_protecting_ratio(never, strict, 0.9) is None


def test_recommendation_protects_against_every_attack(params):
    table = pd.DataFrame(
        rows("lenet", "dlg", "magnitude", {0.0: 35, 0.1: 10, 0.5: 9, 1.0: 8})
        + rows("lenet", "idlg", "magnitude", {0.0: 35, 0.1: 15, 0.5: 9, 1.0: 8})
        + rows("lenet", "dlg", "random", {0.0: 35, 0.1: 30, 0.5: 11, 1.0: 8})
        + rows("lenet", "idlg", "random", {0.0: 35, 0.1: 30, 0.5: 10, 1.0: 8})
    )
    records = guidelines(table, params.guidelines)
    assert all(set(r) == set(RECORD_KEYS) for r in records)
    strict = {(r["attack"], r["metric"]): r for r in records if r["privacy_level"] == "strict"}
    assert strict[("dlg", "magnitude")]["min_ratio"] == 0.1 and strict[("idlg", "magnitude")]["min_ratio"] == 0.5
    assert strict[("dlg", "magnitude")]["he_encrypt_s"] == 1.0 and strict[("dlg", "magnitude")]["he_bytes"] == 105
    # magnitude needs 0.5 (for idlg), random needs 0.5 too: the tie goes to the cheaper cost, then the name
    assert {r["metric"] for r in records if r["recommended"] and r["privacy_level"] == "strict"} == {"magnitude"}
    plan = strategy_table(records)
    row = plan[plan.privacy_level == "strict"].iloc[0]
    assert (row.metric, row.ratio, row.binding_attack) == ("magnitude", 0.5, "idlg")
    moderate = {(r["attack"], r["metric"]): r["min_ratio"] for r in records if r["privacy_level"] == "moderate"}
    assert moderate[("idlg", "magnitude")] == 0.1 and moderate[("dlg", "random")] == 0.5
