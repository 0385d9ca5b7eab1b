"""Self-contained HTML report of an experiment plan: analysis, effects, results table, curves, per-class F1, confusion."""

from __future__ import annotations

import html
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from illustra.config import CONFIG_DIR, merge
from illustra.curation.report import STYLE, figure_tag, plt, section, table_tag
from illustra.data.manifest import atomic_write_text
from illustra.experiments.plan import Plan
from illustra.finetune.jobs import confusion_figure


def effects_figure(analysis: dict) -> str:
    """Horizontal bars: test macro-F1 change of every non-baseline level, with the seed range as a band."""
    rows = [(f"{f['factor']}={e['level']}", e["delta_test"]) for f in analysis["factors"] for e in f["levels"]
            if not e["baseline"]]
    if not rows:
        return "<i>no factor levels besides the baseline</i>"
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1))
    labels, deltas = zip(*rows)
    ax.barh(range(len(rows)), deltas, color=["#2a7" if d > 0 else "#c44" for d in deltas])
    noise = analysis["noise"]
    if not np.isnan(noise):
        ax.axvspan(-noise, noise, color="#999", alpha=0.25, label=f"baseline seed range ±{noise:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("test macro-F1 minus baseline mean")
    return figure_tag(fig)


def curves_figure(results: list[dict], factor: str) -> str:
    """Validation macro-F1 per epoch of the baseline runs and one factor's levels."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for r in results:
        if r["factor"] in ("baseline", factor) and r["history"]:
            style = "--" if r["factor"] == "baseline" else "-"
            ax.plot([h["epoch"] for h in r["history"] if "val_macro_f1" in h],
                    [h["val_macro_f1"] for h in r["history"] if "val_macro_f1" in h], style,
                    label=r["run"], lw=1.2)
    ax.set(xlabel="epoch", ylabel="val macro-F1", title=factor)
    ax.legend(fontsize=7)
    return figure_tag(fig)


def per_class_figure(best: dict, baseline: dict) -> str:
    """Per-class test F1 of the best run next to the baseline."""
    names = list(best["per_class_f1"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.bar(x - 0.2, [baseline["per_class_f1"][n] for n in names], 0.4, label=f"baseline ({baseline['run']})")
    ax.bar(x + 0.2, [best["per_class_f1"][n] for n in names], 0.4, label=f"best by val ({best['run']})")
    ax.set_xticks(x, names, rotation=90, fontsize=8)
    ax.set(ylabel="test F1", ylim=(0, 1))
    ax.legend(fontsize=8)
    return figure_tag(fig)


def best_confusion(result: dict) -> str:
    """Confusion matrix (test split) of one run."""
    fig = confusion_figure(result["confusion"], list(result["per_class_f1"]), f"{result['run']}: test confusion")
    return figure_tag(fig)


def analysis_body(analysis: dict) -> str:
    """The generated sentences plus the per-factor effects table."""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in analysis["text"])
    rows = [{"factor": f["factor"], "level": e["level"], "test macro-F1": e["test"], "Δ test": e["delta_test"],
             "val macro-F1": e["val"], "Δ val": e["delta_val"], "LOSO macro-F1": e["loso"], "Δ LOSO": e["delta_loso"],
             "runs": e["runs"], "seed range": e["seed_range"], "time ×": e["time_ratio"], "verdict": e["verdict"],
             "LOSO verdict": e["loso_verdict"]} for f in analysis["factors"] for e in f["levels"]]
    return f"<ul>{items}</ul>" + table_tag(pd.DataFrame(rows))


def profile_choices(path: str | Path, section_name: str = "finetune") -> list[dict]:
    """The keys a device profile sets in one section, each with its value and the reason written beside it.

    The reason is the key's YAML comment and the comment-only lines below it (the profile files are the single
    source of truth for what ships, and say why there). Nested keys read `encoder.width`."""
    rows: list[dict] = []
    inside, parents = False, []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            inside = line.split("#")[0].strip() == f"{section_name}:"
            continue
        if not inside:
            continue
        match = re.match(r"^(\s+)([A-Za-z_][\w]*):\s*([^#]*?)\s*(?:#\s?(.*))?$", line)
        if match is None:  # a comment-only line: it continues the last key's reason
            text = line.strip().lstrip("#").strip()
            if rows and text:
                rows[-1]["why"] = f"{rows[-1]['why']} {text}".strip()
            continue
        depth = len(match.group(1)) // 2 - 1
        parents = parents[:depth] + [match.group(2)]
        if match.group(3) == "":  # a mapping: its children carry the values
            continue
        rows.append({"key": ".".join(parents), "value": yaml.safe_load(match.group(3)), "why": match.group(4) or ""})
    return rows


def plan_evidence(plan: Plan, analysis: dict, key: str, value) -> str:
    """What this plan measured for `key: value`: the level that sets exactly that, or the baseline's value."""
    for factor in analysis["factors"]:
        for level in factor["levels"]:
            overrides = _flat((plan.factors.get(factor["factor"]) or {}).get(level["level"]) or {})
            if not level["baseline"] and overrides == {key: value}:
                loso = "" if np.isnan(level["delta_loso"]) else f", LOSO {level['delta_loso']:+.3f}"
                return (f"{factor['factor']}={level['level']}: test {level['delta_test']:+.3f}, val "
                        f"{level['delta_val']:+.3f}{loso} ({level['verdict']})")
    base = _flat(merge(plan.finetune, plan.defaults)).get(key, "—")  # what the baseline run trained with
    return "the plan's baseline" if base == value else f"not a level of this plan (its baseline: {base})"


def _flat(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def shipped_body(plan: Plan, analysis: dict, profiles: Path = CONFIG_DIR / "profiles",
                 weights: Path = CONFIG_DIR.parent / "checkpoints" / "classifier.safetensors") -> str:
    """Per device profile: every fine-tuning key it ships, this plan's evidence for it, and the profile's reason."""
    parts = []
    if weights.exists():
        from illustra.weights import read_metadata

        meta = read_metadata(weights)
        config, pre = meta.get("training", {}).get("config", {}), meta.get("preprocessing", {})
        parts.append(f"<p>Shipped classifier <code>{html.escape(weights.name)}</code>: profile "
                     f"<b>{html.escape(str(config.get('profile') or '?'))}</b>, lr {config.get('lr')}, encoder lr ×"
                     f"{config.get('encoder_lr_scale')}, {meta.get('training', {}).get('epochs')} epochs on "
                     f"{html.escape(str(meta.get('training', {}).get('device')))}, predicting with tta "
                     f"<b>{html.escape(str(pre.get('tta')))}</b> ({html.escape(str(pre.get('resample', 'resize')))} "
                     "resampling). Its split and leave-one-style-out figures are in checkpoints/README.md.</p>")
    for path in sorted(profiles.glob("*.yaml")):
        rows = [{"key": r["key"], "ships": r["value"], "this plan measured": plan_evidence(plan, analysis, r["key"],
                                                                                          r["value"]),
                 "why (the profile's own words)": r["why"]} for r in profile_choices(path)]
        parts.append(f"<h3>profile <code>{html.escape(path.stem)}</code></h3>" + table_tag(pd.DataFrame(rows)))
    return "".join(parts) or "<i>no device profiles found</i>"


def write_report(path: str | Path, plan: Plan, summary: pd.DataFrame, results: list[dict], analysis: dict) -> None:
    """Write the report; it embeds every figure, so the file opens offline."""
    by_name = {r["run"]: r for r in results}
    best = by_name[analysis["best_run_by_val"]["run"]]
    baseline = next(r for r in results if r["factor"] == "baseline")
    columns = [c for c in summary.columns if not c.startswith("f1_")]
    plan_record = {"factors": plan.factors, "defaults": plan.defaults, "seeds": plan.seeds, "repeat": plan.repeat}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        section("analysis", "What mattered (generated from the numbers)", analysis_body(analysis)),
        section("shipped", "What each device profile ships, and why", shipped_body(plan, analysis)),
        section("effects", "Effect of each factor level on test macro-F1", effects_figure(analysis)),
        section("results", "All runs", table_tag(summary[columns])),
        section("curves", "Learning curves (validation macro-F1)",
                 '<div class="row">' + "".join(curves_figure(results, f) for f in plan.factors) + "</div>"),
        section("per-class", "Per-class F1: best run vs baseline", per_class_figure(best, baseline)),
        section("confusion", "Confusion matrix of the best run (chosen by validation F1)", best_confusion(best)),
        section("plan", "The plan", f"<pre>{html.escape(json.dumps(plan_record, indent=1))}</pre>"),
    ]
    document = (f"<!doctype html><html><head><meta charset='utf-8'><title>illustra experiment: {html.escape(plan.name)}"
                f"</title><style>{STYLE}</style></head><body><h1>Experiment plan “{html.escape(plan.name)}”</h1>"
                f"<p class='cap'>{len(results)} runs, written {stamp}. Scores: macro-F1 over the 20 classes on the clean "
                f"held-out test split (never used for choices); choices use validation F1, and leave-one-style-out (LOSO: "
                f"trained without one drawing style, scored on it) where generalisation is the question.</p>{''.join(sections)}"
                "</body></html>")
    atomic_write_text(Path(path), document)
