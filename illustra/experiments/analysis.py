"""The analysis of a plan's results, from the numbers alone: which factors moved macro-F1, by how much, beyond noise.

Effects are differences of test macro-F1 against the baseline's mean over seeds. The noise yardstick
is the baseline's seed range (max - min over its seeds): an effect smaller than that is reported as
"within seed noise". Choices (the recommended level per factor, the best run) use validation F1
only; the test split is reported, never used to choose.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from illustra.experiments.plan import Plan, baseline_levels


def _stats(rows: pd.DataFrame, column: str) -> dict:
    """Mean, range and count of one score over a set of runs (seeds); runs without the score are left out."""
    if column not in rows:
        return {"mean": float("nan"), "range": 0.0, "runs": 0, "seconds": float("nan")}
    rows = rows[rows[column].notna()]
    if rows.empty:
        return {"mean": float("nan"), "range": 0.0, "runs": 0, "seconds": float("nan")}
    values = rows[column].to_numpy(dtype=float)
    return {"mean": float(values.mean()), "range": float(values.max() - values.min()) if len(values) > 1 else 0.0,
            "runs": int(len(values)),  # a level's cost: the budget clock, validation (e.g. its TTA views) included
            "seconds": float(rows["budget_seconds" if "budget_seconds" in rows else "train_seconds"].mean())}


def analyse(summary: pd.DataFrame, plan: Plan) -> dict:
    """Effects per factor level, the seed noise, the recommended level per factor, the best run, and a text summary."""
    base_rows = summary[summary["factor"] == "baseline"]
    if base_rows.empty:
        raise ValueError("the plan's results have no baseline run")
    base_test, base_val = _stats(base_rows, "test_macro_f1"), _stats(base_rows, "val_macro_f1")
    base_loso = _stats(base_rows, "loso_macro_f1")
    noise = base_test["range"] if base_test["runs"] > 1 else float("nan")
    loso_noise = base_loso["range"] if base_loso["runs"] > 1 else float("nan")
    base_names = baseline_levels(plan)
    factors = []
    for factor, levels in plan.factors.items():
        entries = [{"level": base_names[factor], "baseline": True, "test": base_test["mean"], "val": base_val["mean"],
                    "delta_test": 0.0, "delta_val": 0.0, "seed_range": base_test["range"], "runs": base_test["runs"],
                    "loso": base_loso["mean"], "delta_loso": 0.0 if base_loso["runs"] else float("nan"),
                    "loso_verdict": "baseline", "time_ratio": 1.0, "verdict": "baseline"}]
        for level in list(levels)[1:]:
            rows = summary[(summary["factor"] == factor) & (summary["level"] == level)]
            if rows.empty:
                continue
            test, val = _stats(rows, "test_macro_f1"), _stats(rows, "val_macro_f1")
            loso = _stats(rows, "loso_macro_f1")
            delta = test["mean"] - base_test["mean"]
            delta_loso = loso["mean"] - base_loso["mean"]
            entries.append({"level": level, "baseline": False, "test": test["mean"], "val": val["mean"],
                            "delta_test": delta, "delta_val": val["mean"] - base_val["mean"],
                            "seed_range": test["range"], "runs": test["runs"], "verdict": _verdict(delta, noise),
                            "loso": loso["mean"], "delta_loso": delta_loso,
                            "loso_verdict": _verdict(delta_loso, loso_noise) if loso["runs"] else "not measured",
                            "time_ratio": _ratio(test["seconds"], base_test["seconds"])})
        chosen = _choose(entries, noise)
        measured = [e for e in entries if not np.isnan(e["loso"])]
        chosen_loso = _choose(measured, loso_noise, "loso") if len(measured) > 1 and measured[0]["baseline"] else None
        factors.append({"factor": factor, "levels": entries, "chosen_by_val": chosen, "chosen_by_loso": chosen_loso,
                        "largest_effect": max(abs(e["delta_test"]) for e in entries)})
    factors.sort(key=lambda f: -f["largest_effect"])
    best = summary.loc[summary["val_macro_f1"].idxmax()]
    analysis = {"baseline": {"test": base_test, "val": base_val, "loso": base_loso, "seeds": base_rows["seed"].tolist()},
                "noise": noise, "loso_noise": loso_noise, "factors": factors,
                "best_run_by_val": {"run": best["run"], "val_macro_f1": float(best["val_macro_f1"]),
                                    "test_macro_f1": float(best["test_macro_f1"])},
                "recommended": {f["factor"]: f["chosen_by_val"] for f in factors}}
    analysis["text"] = describe(analysis)
    return analysis


def _verdict(delta: float, noise: float) -> str:
    """'helps' / 'hurts' when the effect exceeds the baseline's seed range, else 'within seed noise'."""
    if np.isnan(noise):
        if delta == 0:
            return "no change (no seed spread measured)"
        return ("helps" if delta > 0 else "hurts") + " (no seed spread measured)"
    if abs(delta) <= noise:
        return "within seed noise"
    return "helps" if delta > 0 else "hurts"


def _choose(entries: list[dict], noise: float, score: str = "val") -> str:
    """The level with the best score (validation F1, or LOSO) if it beats the baseline by more than the noise,
    else the baseline."""
    best = max(entries, key=lambda e: e[score])
    margin = 0.0 if np.isnan(noise) else noise
    return best["level"] if best[f"delta_{score}"] > margin else entries[0]["level"]


def _ratio(seconds: float, base_seconds: float) -> float:
    """A level's time over the baseline's; NaN where either was not measured or is below the clock's 0.1 s."""
    return seconds / base_seconds if seconds > 0 and base_seconds > 0 else float("nan")


def _cost(ratio: float) -> str:
    """', at 3.3x the training time' when a level's cost differs clearly from the baseline's (not a same-budget effect)."""
    return f", at {ratio:.1f}x the baseline's training time" if ratio > 1.5 or ratio < 1 / 1.5 else ""


def describe(analysis: dict) -> list[str]:
    """Plain sentences, one per finding, generated from the numbers."""
    base = analysis["baseline"]
    noise = analysis["noise"]
    lines = [f"Baseline test macro-F1 {base['test']['mean']:.3f} over {base['test']['runs']} seed(s)"
             + (f"; seed range {noise:.3f} (effects smaller than this are called noise)." if not np.isnan(noise)
                else "; one seed only, so no noise yardstick: read small effects with care.")]
    if base["loso"]["runs"]:
        loso_noise = analysis["loso_noise"]
        lines.append(f"Baseline leave-one-style-out macro-F1 {base['loso']['mean']:.3f} over {base['loso']['runs']} "
                     "seed(s)" + (f"; seed range {loso_noise:.3f}." if not np.isnan(loso_noise) else "."))
    for factor in analysis["factors"]:
        others = [e for e in factor["levels"] if not e["baseline"]]
        if not others:
            continue
        parts = [f"{e['level']} {e['delta_test']:+.3f} ({e['verdict']}{_cost(e['time_ratio'])})"
                 + (f", LOSO {e['delta_loso']:+.3f} ({e['loso_verdict']})" if not np.isnan(e["delta_loso"]) else "")
                 for e in others]
        by_loso = f"; by LOSO: {factor['chosen_by_loso']}" if factor.get("chosen_by_loso") else ""
        lines.append(f"{factor['factor']} (baseline {factor['levels'][0]['level']}): " + "; ".join(parts)
                     + f". Chosen by validation: {factor['chosen_by_val']}{by_loso}.")
    best = analysis["best_run_by_val"]
    lines.append(f"Best run by validation F1: {best['run']} (val {best['val_macro_f1']:.3f}, "
                 f"test {best['test_macro_f1']:.3f}).")
    return lines
