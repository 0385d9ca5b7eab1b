"""`illustra run DATA --out WORK`: the user's own class-folder tree to a verified classifier, in one command.

Stages, each the same code as its own sub-command, each writing under WORK:

    scan      WORK/index        manifest + pixel cache (re-decodes only changed files)
    pretrain  WORK/ssl          SimCLR encoder with the device's profile (skipped with --encoder FILE)
    embed     WORK/embeddings
    curate    WORK/curation     duplicates, photos, imbalance plan, report.html
    finetune  WORK/finetune     classifier.safetensors, split.csv, metrics.json (test scored once)
    export    WORK/export       train/ val/ test/ as class-folder trees of hard links + CSV lists
    evaluate  WORK/evaluation.json   `evaluate.py` on WORK/export/test: the held-out figures
    (then)    WORK/index.html   one page: summary, links to the reports, evaluation, misclassified images
              (`illustra.index_page.write_index`, called by `illustra run` after the stages)

A stage is skipped when it finished before with the same inputs: its key hashes its command, the
index fingerprint after `scan`, the values of the configs it reads (its profile section included;
comments do not count) and the key of the stage before it (WORK/run.json keeps them). An interrupted
`pretrain` or `finetune` resumes from its checkpoint; `--from STAGE` redoes that stage and every later one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from illustra.errors import UserError

STAGES = ("scan", "pretrain", "embed", "curate", "finetune", "export", "evaluate")
RECORD = "run.json"
CONFIGS = {"pretrain": ("ssl.yaml",), "curate": ("curation.yaml",), "finetune": ("finetune.yaml",)}
PROFILE_SECTIONS = {"pretrain": "ssl", "curate": "curation", "finetune": "finetune"}  # what each reads of a profile


SETTABLE = {"pretrain", "curate", "finetune"}


def stage_overrides(sets: list[str]) -> dict[str, list[str]]:
    """`--set STAGE.KEY=VALUE` (e.g. finetune.epochs=10, curate.photos.texture_steps=200) -> per-stage `--set`."""
    out: dict[str, list[str]] = {}
    for item in sets:
        stage, _, rest = item.partition(".")
        if stage not in SETTABLE or "=" not in rest:
            raise UserError(f"--set {item}: expected STAGE.KEY=VALUE with STAGE one of {', '.join(sorted(SETTABLE))} "
                            "(e.g. finetune.epochs=10)")
        out.setdefault(stage, []).append(rest)
    return out


def stage_commands(data: Path, work: Path, encoder: Path | None, ssl_budget: str | None,
                   finetune_budget: str | None, sets: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """(stage, `illustra` argv) in order; `pretrain` only when no encoder is given."""
    extra = {stage: [arg for value in values for arg in ("--set", value)]
             for stage, values in stage_overrides(sets or []).items()}
    index = str(work / "index")
    trained = encoder or work / "ssl" / "encoder.safetensors"
    steps = [("scan", ["scan", str(data), "--out", index])]
    if encoder is None:
        budget = ["--time-budget", ssl_budget] if ssl_budget else []
        steps.append(("pretrain", ["pretrain", "--data", str(data), "--out", str(work / "ssl"), "--work", index,
                                   *budget, *extra.get("pretrain", [])]))
    budget = ["--time-budget", finetune_budget] if finetune_budget else []
    steps += [
        ("embed", ["embed", "--data", str(data), "--encoder", str(trained), "--out", str(work / "embeddings"),
                   "--work", index]),
        ("curate", ["curate", str(data), "--out", str(work / "curation"), "--encoder", str(trained), "--work", index,
                    *extra.get("curate", [])]),
        ("finetune", ["finetune", "--curation", str(work / "curation"), "--out", str(work / "finetune"),
                      "--encoder", str(trained), "--work", index, *budget, *extra.get("finetune", [])]),
        ("export", ["export", str(work / "finetune"), "--to", str(work / "export")]),
        ("evaluate", ["evaluate", "--data", str(work / "export" / "test"), "--weights",
                      str(work / "finetune" / "classifier.safetensors"), "--json", str(work / "evaluation.json")]),
    ]
    return steps


def stage_key(stage: str, argv: list[str], fingerprint: str, previous: str, profile: str,
              config_dir: str | Path | None = None) -> str:
    """What a stage's result depends on, hashed: command, index fingerprint, configs, the stage before.

    The configs count by their values, not their text: a comment or a blank line changes no key, so an upgrade
    that only re-words a config does not redo a 25-minute pretraining. Of the device profile, only the section
    the stage reads counts (a `finetune:` change leaves `pretrain` and `curate` up to date)."""
    import yaml

    from illustra.config import CONFIG_DIR, merge

    config_dir = Path(config_dir or CONFIG_DIR)

    def read(name: str) -> dict:
        path = config_dir / name
        return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.exists() else {}

    configs: dict = {name: read(name) for name in CONFIGS.get(stage, ())}
    if stage in PROFILE_SECTIONS:
        sections = read(f"profiles/{profile}.yaml")
        configs["profile"] = sections.get(PROFILE_SECTIONS[stage])
        if stage == "curate":  # its report shows the imbalance plan that fine-tuning will apply
            configs["imbalance"] = merge(read("finetune.yaml"), sections.get("finetune") or {}).get("imbalance")
    blob = json.dumps({"stage": stage, "argv": argv, "index": fingerprint, "previous": previous, "configs": configs,
                       "profile": profile if stage in PROFILE_SECTIONS else None}, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def text_stage_key(stage: str, argv: list[str], fingerprint: str, previous: str, profile: str) -> str:
    """The key as illustra wrote it before 2026-12-08 (the configs' text). Read only to carry a run recorded then
    over to `stage_key` without redoing it: same text means same values."""
    from illustra.config import CONFIG_DIR

    configs = {name: (Path(CONFIG_DIR) / name).read_text(encoding="utf-8") for name in CONFIGS.get(stage, ())}
    profile_file = Path(CONFIG_DIR) / "profiles" / f"{profile}.yaml"
    if stage in CONFIGS and profile_file.exists():
        configs["profile"] = profile_file.read_text(encoding="utf-8")
    blob = json.dumps({"stage": stage, "argv": argv, "index": fingerprint, "previous": previous, "configs": configs},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _outputs_exist(stage: str, work: Path) -> bool:
    """The file each stage's later stages need (a key alone does not prove the files are still there)."""
    needed = {"scan": work / "index" / "index.json", "pretrain": work / "ssl" / "encoder.safetensors",
              "embed": work / "embeddings" / "embeddings.npy", "curate": work / "curation" / "curation.json",
              "finetune": work / "finetune" / "metrics.json", "export": work / "export" / "test.csv",
              "evaluate": work / "evaluation.json"}
    return needed[stage].exists()


def run_workflow(data: str | Path, work: str | Path, run_command: Callable[[list[str]], int],
                 encoder: str | Path | None = None, start_from: str | None = None, ssl_budget: str | None = None,
                 finetune_budget: str | None = None, profile: str = "cpu", sets: list[str] | None = None,
                 log=print) -> dict:
    """Run (or bring up to date) every stage; returns the record written to WORK/run.json."""
    data, work = Path(data), Path(work)
    if not data.is_dir():
        raise UserError(f"{data} is not a folder: give the folder that holds your class sub-folders")
    if work.resolve() == data.resolve() or data.resolve() in work.resolve().parents:
        raise UserError(f"--out {work} lies inside the data folder {data}: choose a folder outside it")
    if encoder is not None and not Path(encoder).is_file():
        raise UserError(f"--encoder {encoder} does not exist")
    if start_from is not None and start_from not in STAGES:
        raise UserError(f"--from {start_from}: not a stage; the stages are {', '.join(STAGES)}")
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / RECORD
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.exists() else {}
    stages = record.setdefault("stages", {})
    record.update({"data": str(data.resolve()), "encoder": str(encoder) if encoder else "pretrained here"})
    steps = stage_commands(data, work, Path(encoder) if encoder else None, ssl_budget, finetune_budget, sets)
    redo = False
    previous, previous_text, started = "", "", time.perf_counter()
    for stage, argv in steps:
        redo = redo or stage == start_from
        fingerprint = _index_fingerprint(work) if stage != "scan" else ""
        key = stage_key(stage, argv, fingerprint, previous, profile)
        text_key = text_stage_key(stage, argv, fingerprint, previous_text, profile)
        done = stages.get(stage, {})
        if done.get("key") == text_key:  # recorded by an older illustra from the same inputs: carried over, not redone
            done["key"] = key
        previous_text = text_key
        if stage != "scan" and not redo and done.get("key") == key and done.get("done") and _outputs_exist(stage, work):
            log(f"== {stage}: up to date (same inputs as the finished run of {done.get('finished', '?')})")
            previous = key
            continue
        if stage == "export" and (work / "export").exists():
            shutil.rmtree(work / "export")  # rebuilt from the new split: links only, the originals stay
        resume = stage in ("pretrain", "finetune") and done.get("key") == key and not done.get("done") \
            and (work / ("ssl" if stage == "pretrain" else "finetune") / "checkpoint.safetensors").exists()
        command = [*argv, "--resume"] if resume and not redo else argv
        log(f"\n== illustra {' '.join(command)}" + ("  (resuming the interrupted run)" if command is not argv else ""))
        stages[stage] = {"key": key, "done": False}
        _save(record_path, record)
        begun = time.perf_counter()
        code = run_command(command)
        if code != 0:
            raise UserError(f"stage {stage} stopped (`illustra {' '.join(command)}` exited {code}); fix the cause "
                            f"and run the same command again: finished stages are kept")
        if stage == "scan":  # the index's fingerprint keys every later stage
            key = stage_key(stage, argv, _index_fingerprint(work), "", profile)
            previous_text = text_stage_key(stage, argv, _index_fingerprint(work), "", profile)
        stages[stage] = {"key": key, "done": True, "seconds": round(time.perf_counter() - begun, 1),
                         "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        _save(record_path, record)
        previous = key
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["summary"] = summarise(work)
    _save(record_path, record)
    return record


def _index_fingerprint(work: Path) -> str:
    """The index fingerprint (changes when any file of the folder changes)."""
    info = work / "index" / "index.json"
    return json.loads(info.read_text(encoding="utf-8")).get("fingerprint", "") if info.exists() else ""


def _save(path: Path, record: dict) -> None:
    """Write the run record (stage keys, timings, summary)."""
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def summarise(work: Path) -> dict:
    """What was found and how good the classifier is, from the stages' own outputs."""
    curation = json.loads((work / "curation" / "curation.json").read_text(encoding="utf-8"))
    evaluation = json.loads((work / "evaluation.json").read_text(encoding="utf-8"))
    export = {part: sum(1 for _ in open(work / "export" / f"{part}.csv", encoding="utf-8")) - 1
              for part in ("train", "val", "test")}
    return {
        "files": curation.get("files"), "unreadable": (curation.get("files") or 0) - (curation.get("usable") or 0),
        "problems": str(work / "index" / "problems.csv"), "duplicate_groups": curation.get("duplicate_groups"),
        "duplicate_copies_dropped": curation.get("duplicate_copies_dropped"), "photos": curation.get("photos"),
        "blank": curation.get("blank"), "clean": curation.get("clean"),
        "imbalance_before": curation.get("imbalance_before"), "imbalance_after": curation.get("imbalance_after"),
        "imbalance_as_trained": curation.get("imbalance_as_trained"), "imbalance_plan": curation.get("imbalance_plan"),
        "split": export, "test_macro_f1": evaluation.get("macro_f1"), "test_micro_f1": evaluation.get("micro_f1"),
        "artefacts": {"report": str(work / "curation" / "report.html"),
                      "classifier": str(work / "finetune" / "classifier.safetensors"),
                      "test_folder": str(work / "export" / "test"), "evaluation": str(work / "evaluation.json"),
                      "index_page": str(work / "index.html")},
    }


def summary_lines(summary: dict) -> list[str]:
    """The one-screen summary printed at the end of `illustra run`."""
    split = summary["split"]
    unreadable = summary.get("unreadable", 0)
    return [
        f"files {summary['files']}"
        + (f" ({unreadable} unreadable, listed in {summary['problems']})" if unreadable else "")
        + f": {summary['duplicate_copies_dropped']} duplicate copies dropped "
        f"({summary['duplicate_groups']} groups), {summary['photos']} photos, {summary['blank']} blank images; "
        f"{summary['clean']} images in the cleaned set",
        f"imbalance (largest / smallest class): {summary['imbalance_before']:.1f}x before, "
        f"{summary['imbalance_after']:.1f}x after cleaning, {summary['imbalance_as_trained']:.1f}x as fine-tuning "
        f"samples it (plan: {summary['imbalance_plan']})",
        f"held-out test ({split['test']} images, never trained on): macro F1 {summary['test_macro_f1']:.4f}, "
        f"micro F1 {summary['test_micro_f1']:.4f}",
        f"curation report   {summary['artefacts']['report']}",
        f"classifier        {summary['artefacts']['classifier']}",
        f"one page          {summary['artefacts']['index_page']}",
        f"verify it         python evaluate.py --data {summary['artefacts']['test_folder']} "
        f"--weights {summary['artefacts']['classifier']}",
    ]
