"""`illustra experiment`: run every run of a plan (resumable), then write summary.csv, analysis and report.html."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from illustra.data.cache import CacheSpec
from illustra.experiments.plan import Plan, Run, expand_runs, merge, split_overrides, wants_loso
from illustra.finetune.jobs import finetune_folder, training_table
from illustra.finetune.train import FinetuneConfig

RESULT = "result.json"


def resolve_config(plan: Plan, run: Run) -> tuple[FinetuneConfig, dict, object]:
    """The run's fine-tuning config (base + overrides + seed), data variant and encoder spec."""
    finetune, data, encoder = split_overrides(run.overrides)
    config = FinetuneConfig.from_dict(merge(plan.finetune, {**finetune, "seed": run.seed}))
    return config, data, encoder if encoder is not None else plan.encoder_weights


def run_key(plan: Plan, run: Run) -> str:
    """Short hash of everything a run's result depends on that the plan decides: the resolved fine-tuning config
    (the device profile's recipe, the plan's `base:`, the level and the seed), the data variant, and the encoder
    (a weights file by its content; a pretraining by its resolved SSL config). A finished run is read back only
    under the same key, so a changed profile, base recipe or encoder file redoes it instead of mixing recipes."""
    from illustra.ssl.embed import file_digest

    config, data, spec = resolve_config(plan, run)
    if isinstance(spec, dict):
        encoder: object = {"pretrain": merge(plan.ssl_base, spec.get("pretrain") or {})}
    elif spec in (None, "none", "random"):
        encoder = None
    else:
        encoder = {"file": Path(spec).name, "digest": file_digest(spec) if Path(spec).is_file() else "missing"}
    text = json.dumps({"finetune": config.to_dict(), "data": data, "encoder": encoder}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def encoder_path(spec: object, out: Path, plan: Plan, work: Path, cache: CacheSpec) -> Path | None:
    """A weights path as given; None for random init; or the encoder pretrained (once, cached) from {pretrain: ...}."""
    if spec in (None, "none", "random"):
        return None
    if not isinstance(spec, dict):
        return Path(spec)
    from illustra.ssl.jobs import pretrain_cached
    from illustra.ssl.pretrain import ENCODER_FILE, PretrainConfig

    raw = merge(plan.ssl_base, spec.get("pretrain") or {})
    key = hashlib.sha1(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:10]
    run_dir = out / "encoders" / key
    if not (run_dir / ENCODER_FILE).exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        pretrain_cached(run_dir, work, PretrainConfig.from_dict(raw), cache, resume=True)
    return run_dir / ENCODER_FILE


def execute_run(plan: Plan, run: Run, out: Path, curation: Path, work: Path, cache: CacheSpec,
                progress: bool = True, styles: pd.Series | None = None, log=print) -> dict:
    """Train and score one run into OUT/runs/NAME; a finished run with the same key is read back, not redone.

    With `styles` (path -> drawing style), runs the plan marks for it also get the leave-one-style-out
    score (OUT/runs/NAME/loso/<style>/), added to a finished run's result without redoing it."""
    run_dir = out / "runs" / run.name
    done = run_dir / RESULT
    key = run_key(plan, run)
    if done.exists():
        result = json.loads(done.read_text(encoding="utf-8"))
        if result.get("key") == key:
            _older_timing(result, run_dir)
            return _with_loso(plan, run, result, run_dir, curation, work, cache, styles, log)
        shutil.rmtree(run_dir)  # the plan changed this run: start it again
    config, data, encoder_spec = resolve_config(plan, run)
    encoder = encoder_path(encoder_spec, out, plan, work, cache)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = {"run": run.name, "factor": run.factor, "level": run.level, "seed": run.seed, "data": data,
                "encoder_weights": str(encoder) if encoder else None, "finetune": config.to_dict()}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    table = training_table(curation, plan.split_seed, seed=run.seed, **data)
    started = time.perf_counter()
    metrics = finetune_folder(curation, run_dir, work, config, encoder, cache, resume=True, progress=progress,
                              table=table)
    wall = time.perf_counter() - started
    history = metrics["history"]
    result = {
        "key": key, "run": run.name, "factor": run.factor, "level": run.level, "seed": run.seed,
        "test_macro_f1": metrics["test_macro_f1"], "test_micro_f1": metrics["test_micro_f1"],
        "val_macro_f1": history[-1]["val_macro_f1"] if history else float("nan"),
        "best_val_macro_f1": max((h["val_macro_f1"] for h in history if "val_macro_f1" in h), default=float("nan")),
        "epochs": metrics["epochs"], "train_images": metrics["train_images"],
        "train_seconds": metrics.get("train_seconds", metrics["seconds"]),  # the training steps alone
        "budget_seconds": metrics["seconds"], "wall_seconds": round(wall, 1),  # + validation, checkpoints; + all
        "images_per_second": round(float(np.mean([h["images_per_second"] for h in history])), 1) if history else 0.0,
        "per_class_f1": metrics["test_per_class_f1"], "confusion": metrics["test_confusion"],
        "history": history, "overrides": run.overrides,
    }
    done.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return _with_loso(plan, run, result, run_dir, curation, work, cache, styles, log)


def _with_loso(plan: Plan, run: Run, result: dict, run_dir: Path, curation: Path, work: Path, cache: CacheSpec,
               styles: pd.Series | None, log) -> dict:
    """Add the LOSO mean and per-style scores to a run's result (once; saved with it)."""
    if styles is None or not wants_loso(plan, run) or "loso_macro_f1" in result:
        return result
    from illustra.experiments.loso import leave_style_out

    config, data, encoder_spec = resolve_config(plan, run)
    encoder = encoder_path(encoder_spec, run_dir.parent.parent, plan, work, cache)
    started = time.perf_counter()
    loso = leave_style_out(curation, run_dir / "loso", work, config, encoder, styles, split_seed=plan.split_seed,
                           log=log, cache=cache)
    result.update({"loso_macro_f1": loso["mean_macro_f1"], "loso_per_style": loso["per_style"],
                   "loso_seconds": round(time.perf_counter() - started, 1)})
    (run_dir / RESULT).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def _older_timing(result: dict, run_dir: Path) -> None:
    """A result written before 2026-12-07 holds the budget clock (training + validation + checkpoints) under
    `train_seconds`: move it to `budget_seconds`, and take the training steps from the run's metrics.json."""
    if "budget_seconds" in result:
        return
    result["budget_seconds"] = result["train_seconds"]
    metrics = run_dir / "metrics.json"
    steps = json.loads(metrics.read_text(encoding="utf-8")).get("train_seconds") if metrics.exists() else None
    result["train_seconds"] = float("nan") if steps is None else steps


def summary_frame(results: list[dict]) -> pd.DataFrame:
    """One row per run: factor, level, seed, scores, time, throughput, per-class F1 columns."""
    rows = []
    for r in results:
        row = {k: r[k] for k in ("run", "factor", "level", "seed", "test_macro_f1", "test_micro_f1", "val_macro_f1",
                                 "best_val_macro_f1", "epochs", "train_images", "train_seconds", "wall_seconds",
                                 "images_per_second")}
        row["budget_seconds"] = r.get("budget_seconds", r["train_seconds"])
        row["loso_macro_f1"] = r.get("loso_macro_f1", float("nan"))
        row.update({f"loso_{name}": value for name, value in (r.get("loso_per_style") or {}).items()})
        row.update({f"f1_{name}": value for name, value in r["per_class_f1"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


def run_plan(plan: Plan, out: str | Path, curation: str | Path, work: str | Path, cache: CacheSpec = CacheSpec(),
             progress: bool = True, only: list[str] | None = None, log=print,
             styles: str | Path | None = None) -> pd.DataFrame:
    """Execute (or read back) every run, then write OUT/summary.csv, OUT/analysis.json and OUT/report.html.

    `styles`: a truth CSV (path, style) that turns on the plan's LOSO column (plan key `loso`)."""
    from illustra.experiments.analysis import analyse
    from illustra.experiments.loso import read_styles
    from illustra.experiments.report import write_report

    out, curation, work = Path(out), Path(curation), Path(work)
    out.mkdir(parents=True, exist_ok=True)
    runs = [r for r in expand_runs(plan) if not only or r.name in only or r.factor in only]
    (out / "plan.yaml").write_text(Path(plan.source).read_text(encoding="utf-8") if plan.source else "", encoding="utf-8")
    style_of = read_styles(styles) if styles else None
    if plan.loso and style_of is None:
        log(f"the plan asks for LOSO scores of {plan.loso}, but no --styles truth was given: the column stays empty")
    results = []
    for number, run in enumerate(runs, 1):
        log(f"[{number}/{len(runs)}] {run.name}")
        result = execute_run(plan, run, out, curation, work, cache, progress, style_of, log)
        loso = f"  LOSO {result['loso_macro_f1']:.4f}" if "loso_macro_f1" in result else ""
        log(f"    test macro F1 {result['test_macro_f1']:.4f}  val {result['val_macro_f1']:.4f}{loso}  "
            f"{result['train_seconds']:.0f} s  {result['images_per_second']:.0f} img/s")
        results.append(result)
    summary = summary_frame(results)
    summary.to_csv(out / "summary.csv", index=False, float_format="%.4f")
    analysis = analyse(summary, plan)
    (out / "analysis.json").write_text(json.dumps(analysis, indent=2), encoding="utf-8")
    write_report(out / "report.html", plan, summary, results, analysis)
    return summary
