"""`illustra <command>`: a thin command line over the package's plain functions."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SHIPPED_ENCODER = "checkpoints/encoder.safetensors"
SHIPPED_CLASSIFIER = "checkpoints/classifier.safetensors"
WORK_HELP = "manifest + pixel cache folder (default: one per data folder, work/index/<folder name>-<hash of its path>)"

def _cmd_scan(args: argparse.Namespace) -> int:
    """Scan a data folder, decode every image once, write manifest + pixel cache."""
    from illustra.config import load_config
    from illustra.data.cache import CacheSpec
    from illustra.data.index import IndexSettings, index_dataset
    from illustra.data.manifest import problems, save_manifest

    config = load_config(args.config, args.set)
    settings = IndexSettings(CacheSpec(**config["cache"]), int(config["max_pixels"]), int(config["workers"]))
    result = index_dataset(args.data, args.out, settings)
    save_manifest(problems(result.manifest), Path(args.out) / "problems.csv")
    print(summarise_index(result))
    return 0


def summarise_index(result) -> str:
    """Human summary of an index run: classes in model order, counts, problems, throughput."""
    manifest = result.manifest
    lines = [f"classes (model order, natural sort of folder names): {len(result.classes)}"]
    counts = manifest[manifest["class_id"] >= 0].groupby("class_folder")["status"].value_counts().unstack(fill_value=0)
    for class_id, folder in enumerate(result.classes):
        row = counts.loc[folder] if folder in counts.index else {}
        usable = int(row.get("ok", 0)) + int(row.get("warning", 0))
        lines.append(f"  {class_id:>3}  {folder:<16} {usable:>7} usable  {int(row.get('error', 0)):>4} unusable")
    status = manifest["status"].value_counts().to_dict()
    lines.append(f"files: {len(manifest)}  " + "  ".join(f"{k}: {v}" for k, v in sorted(status.items())))
    flagged = manifest[manifest["status"] != "ok"]
    for _, row in flagged.head(20).iterrows():
        lines.append(f"  {row['status']:<7} {row['path']}  {row['reason']}")
    if len(flagged) > 20:
        lines.append(f"  ... {len(flagged) - 20} more in problems.csv")
    rate = f"{result.images_per_second:.0f} images/s" if result.decoded else "nothing to decode"
    lines.append(f"decoded {result.decoded} ({rate}), reused {result.reused} unchanged; wrote {result.work_dir}")
    return "\n".join(lines)


def time_budget(text: str) -> float:
    """Seconds of a --time-budget ('90s', '20m', '1.5h', or a plain number of seconds). A plain number under a
    minute is said aloud on stderr: `--ssl-budget 2` is two seconds, and one epoch, not two minutes."""
    from illustra.ssl.jobs import parse_duration

    seconds = parse_duration(text)
    if 0 < seconds < 60 and str(text).strip().replace(".", "", 1).isdigit():
        print(f"note: a time budget of {text} is {seconds:g} seconds (a number without a unit is seconds); "
              f"write {text}m for minutes", file=sys.stderr)
    return seconds


def budget_text(text: str) -> str:
    """argparse type of every budget option: a duration that parses, checked before any stage runs (kept as
    written, so `illustra run` hands it on to its stages)."""
    from illustra.ssl.jobs import parse_duration

    try:
        parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _cmd_pretrain(args: argparse.Namespace) -> int:
    """SimCLR-pretrain the encoder on a data folder."""
    from illustra.config import load_config
    from illustra.ssl.jobs import pretrain_folder
    from illustra.ssl.pretrain import PretrainConfig

    raw = load_config(args.config, args.set, section="ssl")
    if args.time_budget:
        raw["time_budget_s"] = time_budget(args.time_budget)
    config = PretrainConfig.from_dict(raw)
    summary = pretrain_folder(args.data, args.out, _work(args), config, _data_cache_spec(_work(args)), resume=args.resume)
    if _rank() != 0:
        return 0  # under torchrun rank 0 reports
    last = {k: round(v, 4) if isinstance(v, float) else v for k, v in (summary["history"] or [{}])[-1].items()}
    print(f"profile {config.profile}, device {summary['device']}: "
          f"pretrained {summary['epochs']} epochs in {summary['wall_seconds']} s "
          f"({summary['view_images_per_second']} view-images/s); last: {last}")
    print(f"wrote {Path(args.out) / 'encoder.safetensors'} and {Path(args.out) / 'metrics.json'}; "
          f"TensorBoard: tensorboard --logdir {Path(args.out) / 'tb'}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    """Embeddings for every manifest row of a data folder."""
    from illustra.ssl.jobs import embed_folder

    manifest, reused = embed_folder(args.data, args.encoder, args.out, _work(args), _data_cache_spec(_work(args)))
    state = "reused (encoder and pixels unchanged)" if reused else "computed"
    count = int((manifest["embedding_row"] >= 0).sum())
    print(f"embeddings for {count} images {state}: {Path(args.out)}/embeddings.npy")
    return 0


def _cmd_curate(args: argparse.Namespace) -> int:
    """Curation jobs against the manifest and embeddings: duplicates, photos, imbalance plan, report."""
    from illustra.config import load_config
    from illustra.curation.run import JOBS, CurationSettings, curate

    settings = CurationSettings.from_dict(load_config(args.config, args.set, section="curation"))
    jobs = tuple(args.only) if args.only else JOBS
    summary = curate(args.data, args.out, _work(args), args.encoder, settings, _data_cache_spec(_work(args)), jobs)
    anchors = summary.get("photo_anchors")
    steps = summary.get("texture_view_steps")
    examples = summary.get("texture_examples") or {}
    taught = (f" on {examples['photos']} photo and {examples['drawings']} drawing examples"
              + (" (calm foregrounds: the frame view was sure of too few drawings)"
                 if examples["drawings_from"] == "calm foregrounds" else "")) if examples else ""
    counts = f" ({examples['photos']} photo, {examples['drawings']} drawing)" if examples else ""
    texture = (f", texture view {steps} steps{taught}" if steps else
               f", texture view not trained: too few sure examples{counts}" if settings.photos.texture_view else "")
    evidence = "" if anchors is None else (f" ({anchors} anchors" + (
        f"{texture})" if anchors >= settings.photos.min_anchors else ": too few for the relative views, only they are called)"))
    print(f"files {summary['files']}, usable {summary['usable']}, blank {summary['blank']}; duplicate groups "
          f"{summary['duplicate_groups']} ({summary['duplicate_copies_dropped']} copies dropped, "
          f"{summary['label_conflict_groups']} with label conflicts); photos {summary['photos']}{evidence}; "
          f"cleaned set {summary['clean']} images; imbalance {summary['imbalance_before']:.1f}x -> "
          f"{summary['imbalance_after']:.1f}x after cleaning -> {summary['imbalance_as_trained']:.1f}x as fine-tuning "
          f"sees it (plan {summary['imbalance_plan']})")
    print("time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in summary["seconds"].items()))
    print(f"wrote {args.out}/{{manifest,clean,duplicates,duplicate_pairs,photos,problems}}.csv"
          + (f" and {args.out}/report.html" if "report" in jobs else ""))
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune the classifier on a curation run's cleaned, balanced set."""
    from illustra.config import load_config
    from illustra.finetune.jobs import finetune_folder, split_table
    from illustra.finetune.train import FinetuneConfig

    raw = load_config(args.config, args.set, section="finetune")
    if args.time_budget:
        raw["time_budget_s"] = time_budget(args.time_budget)
    if args.from_scratch:
        raw["mode"] = "scratch"
    config = FinetuneConfig.from_dict(raw)
    table = None if args.split_seed is None else \
        split_table(args.curation, args.split_seed, config.val_share, config.test_share)
    summary = finetune_folder(args.curation, args.out, args.work, config, args.encoder,
                              _data_cache_spec(args.work or _curation_work(args.curation)),
                              resume=args.resume, final_on_all=args.all, table=table)
    if _rank() != 0:
        return 0
    last = {k: round(v, 4) if isinstance(v, float) else v for k, v in (summary["history"] or [{}])[-1].items()}
    print(f"profile {config.profile}, device {summary['device']}, mode {config.mode}: "
          f"{summary['epochs']} epochs in {summary['seconds']} s; last epoch {last}")
    if "test_macro_f1" in summary:
        print(f"held-out test: macro F1 {summary['test_macro_f1']:.4f}, micro F1 {summary['test_micro_f1']:.4f} "
              f"(split sizes {summary['split_sizes']})")
    print(f"wrote {Path(args.out) / 'classifier.safetensors'}; TensorBoard: tensorboard --logdir {Path(args.out) / 'tb'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """The submission contract: classification report of a weights file on a class-folder tree."""
    import json

    from illustra.finetune.jobs import UnknownClassError, evaluate_folder, save_confusion

    if not Path(args.weights).is_file():
        print(f"evaluate: weights file not found: {args.weights}", file=sys.stderr)
        return 2
    try:
        result = evaluate_folder(args.data, args.weights, adapt_bn=args.adapt_bn)
    except (UnknownClassError, FileNotFoundError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    for item in result["unreadable"] + result["skipped"]:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(result["report"])
    print(f"macro F1: {result['macro_f1']:.4f}")
    present, folder = len(result["labels"]), len(result["folder_classes"])
    if present != folder or folder != len(result["classes"]):
        print(f"  (macro F1 averages the {present} classes present in the folder or predicted; the folder holds "
              f"{folder} of the model's {len(result['classes'])} classes; over those {folder} alone: "
              f"{result['macro_f1_folder_classes']:.4f})")
    print(f"micro F1: {result['micro_f1']:.4f}")
    print(f"weighted F1: {result['weighted_f1']:.4f}")
    print(f"images: {result['images']}, evaluated: {result['evaluated']}, unreadable: {len(result['unreadable'])}, "
          f"{result['images_per_second']} images/s" + (", batch-norm re-estimated on this folder" if args.adapt_bn else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({k: result[k] for k in (
            "macro_f1", "micro_f1", "weighted_f1", "per_class", "images", "evaluated", "unreadable", "confusion",
            "classes", "labels", "report", "folder_classes", "macro_f1_folder_classes", "predictions")}, indent=2),
            encoding="utf-8")
    if args.confusion:
        save_confusion(result, args.confusion)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    """The user's folder end to end: scan -> pretrain -> embed -> curate -> finetune -> export -> evaluate."""
    from illustra.index_page import write_index
    from illustra.train.device import pick_device
    from illustra.train.profiles import resolve_profile
    from illustra.workflow import run_workflow, summary_lines

    profile = resolve_profile()
    print(f"device {pick_device()}, profile {profile} (configs/profiles/; --device / --profile to choose)")
    record = run_workflow(args.data, args.out, main, encoder=args.encoder, start_from=args.start_from,
                          ssl_budget=args.ssl_budget, finetune_budget=args.finetune_budget, profile=profile,
                          sets=args.set)
    write_index(args.out)
    print(f"\nillustra run done in {record['seconds']:.0f} s (stage records: {Path(args.out) / 'run.json'})")
    for line in summary_lines(record["summary"]):
        print(line)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """A fine-tuning run's train / val / test split as class-folder trees (hard links) plus CSV lists."""
    from illustra.finetune.export import export_split

    result = export_split(args.run_dir, args.to, copy=args.copy)
    counts = result["counts"]
    how = f"{result['links']} hard links, {result['copies']} copies" if result["links"] else f"{result['copies']} copies"
    print(f"exported {counts['train']} train / {counts['val']} val / {counts['test']} test images to {args.to}/ "
          f"({how}; the originals in {result['data']} are untouched)")
    print(f"check the held-out figures: python evaluate.py --data {args.to}/test --weights "
          f"{Path(args.run_dir) / 'classifier.safetensors'}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    """Class and probability for single images."""
    from illustra.finetune.jobs import predict_paths

    failed = 0
    for item in predict_paths(args.weights, args.images):
        if "error" in item:
            failed += 1
            print(f"{item['path']}\terror: {item['error']}")
        else:
            print(f"{item['path']}\t{item['class']}\t{item['probability']:.4f}")
    return 1 if failed == len(args.images) else 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    """Run an experiment plan (resumable) and write summary.csv, analysis.json and report.html."""
    import json

    from illustra.experiments.plan import load_plan
    from illustra.experiments.runner import run_plan

    plan = load_plan(args.plan, "quick" if args.quick else args.variant)
    if args.encoder:
        plan.encoder_weights = args.encoder
    started = time.perf_counter()
    from illustra.finetune.jobs import curation_index

    work = args.work or curation_index(args.curation).get("work") or "work/index"
    summary = run_plan(plan, args.out, args.curation, work, _data_cache_spec(work), progress=not args.no_progress,
                       only=args.only, styles=args.styles)
    analysis = json.loads((Path(args.out) / "analysis.json").read_text(encoding="utf-8"))
    print("\n".join(analysis["text"]))
    print(f"{len(summary)} runs in {time.perf_counter() - started:.0f} s; "
          f"wrote {Path(args.out) / 'summary.csv'} and {Path(args.out) / 'report.html'}")
    return 0


def _work(args: argparse.Namespace) -> str:
    """--work as given, else the data folder's own work folder (one per folder: work/index/<name>-<hash>)."""
    from illustra.data.workspace import default_work

    return args.work or str(default_work(args.data))


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    from illustra.train.device import distributed

    return distributed()[0]


def _data_cache_spec(work: str | None = None):
    """The pixel cache the stage reads: the one WORK was indexed with (`scan --set cache.size=...` is kept),
    else configs/data.yaml's."""
    from illustra.config import load_config
    from illustra.data.cache import CacheSpec
    from illustra.data.index import recorded_settings

    recorded = recorded_settings(work) if work else None
    return recorded.cache if recorded is not None else CacheSpec(**load_config("data.yaml")["cache"])


def _curation_work(curation: str) -> str | None:
    """The work folder a curation was made from (None when it does not say)."""
    from illustra.data.workspace import WorkspaceError
    from illustra.finetune.jobs import curation_index

    try:
        return curation_index(curation).get("work")
    except WorkspaceError:  # no curation.json: finetune itself says so in one sentence
        return None


def _cmd_bench_build(args: argparse.Namespace) -> int:
    """Build the public stand-in benchmark."""
    from illustra.bench.build import build_benchmark
    from illustra.bench.sources import MissingToolError

    try:
        record = build_benchmark(args.out, seed=args.seed, cache=args.cache, small=args.small,
                                 workers=args.workers, force=args.force)
    except MissingToolError as exc:
        print(f"illustra bench build: {exc}", file=sys.stderr)
        return 1
    print(summarise_build(record, Path(args.out)))
    return 0


def _cmd_bench_holdout(args: argparse.Namespace) -> int:
    """Build the second folder (unseen icon styles, photo crops and cut-outs) for the photo detector."""
    from illustra.bench.build import build_holdout
    from illustra.bench.sources import MissingToolError

    try:
        record = build_holdout(args.out, part=args.part, seed=args.seed, cache=args.cache, workers=args.workers,
                               force=args.force, duplicates=args.duplicates, photos=args.photos,
                               cutouts=args.cutouts)
    except MissingToolError as exc:
        print(f"illustra bench holdout: {exc}", file=sys.stderr)
        return 1
    print(summarise_build(record, Path(args.out)))
    return 0


def _cmd_bench_fixture(args: argparse.Namespace) -> int:
    """Build a small synthetic fixture with the benchmark's layout (no download)."""
    from illustra.bench.build import build_fixture

    record = build_fixture(args.out, seed=args.seed, classes=args.classes, per_class=args.per_class)
    print(summarise_build(record, Path(args.out)))
    return 0


def summarise_build(record: dict, out: Path) -> str:
    """Per-class counts and totals of a build."""
    from illustra.data.scan import natural_sorted

    state = "already built, reused" if record.get("reused") else f"built in {record.get('build_seconds', '?')} s"
    counts = record["class_counts"]
    lines = [f"{out}/training: {record['files']} files ({state})"]
    lines += [f"  {folder:<8} {counts[folder]:>6}" for folder in natural_sorted(list(counts))]
    smallest, largest = min(counts.values()), max(counts.values())
    lines.append(f"duplicate copies {record['duplicate_copies']} in {record['duplicate_groups']} groups, "
                 f"photos {record['photos']}, largest/smallest class {largest}/{smallest} = {largest / smallest:.1f}x")
    if record.get("render_failures"):
        lines.append(f"sources that failed to render (skipped): {len(record['render_failures'])}")
    lines.append(f"truth: {out}/truth/{{sources,duplicates,photos}}.csv")
    return "\n".join(lines)


def _cmd_pipeline(args: argparse.Namespace) -> int:
    """Main job: build the benchmark, then run every stage that exists, in order."""
    from illustra.train.device import pick_device
    from illustra.train.profiles import resolve_profile

    out = Path(args.out)
    data, work = str(out / "bench" / "training"), str(out / "index")
    print(f"device {pick_device()}, profile {resolve_profile()} (configs/profiles/; --device / --profile to choose)")
    encoder = Path(SHIPPED_ENCODER)
    steps = [
        ("bench build", ["bench", "build", "--out", str(out / "bench"), "--seed", str(args.seed)]),
        ("scan", ["scan", data, "--out", work]),
    ]
    if args.retrain or not encoder.exists():
        encoder = out / "ssl" / "encoder.safetensors"
        budget = ["--time-budget", args.ssl_budget] if args.ssl_budget else []  # else the profile's budget
        steps.append(("pretrain", ["pretrain", "--data", data, "--out", str(out / "ssl"), "--work", work, *budget]))
    else:
        print(f"reusing the shipped encoder {encoder} (pass --retrain to pretrain it again)")
    steps.append(("embed", ["embed", "--data", data, "--encoder", str(encoder), "--out", str(out / "embeddings"),
                            "--work", work]))
    classifier = Path(SHIPPED_CLASSIFIER)
    steps.append(("curate", ["curate", data, "--out", str(out / "curation"), "--encoder", str(encoder), "--work", work]))
    if args.retrain or not classifier.exists():
        classifier = out / "finetune" / "classifier.safetensors"
        budget = ["--time-budget", args.finetune_budget] if args.finetune_budget else []
        steps.append(("finetune", ["finetune", "--curation", str(out / "curation"), "--out", str(out / "finetune"),
                                   "--encoder", str(encoder), "--work", work, *budget]))
    else:
        print(f"reusing the shipped classifier {classifier} (pass --retrain to fine-tune it again)")
    steps.append(("evaluate", ["evaluate", "--data", data, "--weights", str(classifier),
                               "--json", str(out / "evaluation.json")]))
    started = time.perf_counter()
    for label, argv in steps:
        print(f"\n== illustra {label}", flush=True)
        code = main(argv)
        if code != 0:
            print(f"pipeline stopped: `illustra {' '.join(argv)}` exited {code}", file=sys.stderr)
            return code
    print("note: the evaluation above runs on the whole benchmark folder, which includes the classifier's training "
          "images; the held-out figures are in benchmarks/RESULTS.md")
    print(f"\npipeline done in {time.perf_counter() - started:.0f} s; outputs under {out}/")
    return 0


def evaluate_main(argv: list[str] | None = None) -> int:
    """`python evaluate.py`: the submission contract, with its own name in --help."""
    from illustra.errors import UserError

    parser = argparse.ArgumentParser(prog="python evaluate.py", description="Classification report, macro / micro F1 "
                                     "of a classifier weights file on a folder of class sub-folders.")
    add_evaluate_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _cmd_evaluate(args)
    except UserError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The submission contract's arguments (shared by `illustra evaluate` and evaluate.py)."""
    parser.add_argument("--data", required=True, help="folder of class sub-folders named as in training")
    parser.add_argument("--weights", default="checkpoints/classifier.safetensors",
                        help="classifier weights file (default: %(default)s)")
    parser.add_argument("--json", metavar="OUT", help="also write the numbers as JSON")
    parser.add_argument("--confusion", metavar="PNG", help="also save the confusion matrix")
    parser.add_argument("--adapt-bn", action="store_true",
                        help="re-estimate batch-norm statistics on this folder's images before predicting (AdaBN: "
                             "unlabelled; measured: no gain for the shipped classifier, even on unseen styles)")


class DefaultsShown(argparse.HelpFormatter):
    """Help that shows each option's default, unless it is empty or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, [], False, argparse.SUPPRESS) or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per pipeline stage."""
    parser = argparse.ArgumentParser(
        prog="illustra", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Turn a folder of class sub-folders of illustrations into a clean dataset and a classifier "
                    "trained from scratch.",
        epilog="stage order: scan -> pretrain -> embed -> curate -> finetune -> evaluate (each is a command)\n\n"
               "what most users need:\n"
               "  illustra run DATA --out WORK            every stage on your folder, held-out test, WORK/index.html\n"
               "  python evaluate.py --data WORK/export/test --weights WORK/finetune/classifier.safetensors\n"
               "  python evaluate.py --data FOLDER        the shipped classifier on any class-folder tree\n\n"
               "`illustra COMMAND --help` for a command's options; README.md for the rest.")
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    add_parser = commands.add_parser
    commands.add_parser = lambda name, **kw: add_parser(  # every option's help shows its default
        name, formatter_class=DefaultsShown, **kw)
    machine = argparse.ArgumentParser(add_help=False)  # the options every stage that computes shares
    machine.add_argument("--device", choices=["auto", "cpu", "cuda"],
                         help="where to compute (default auto: CUDA when available, else CPU)")
    machine.add_argument("--profile", help="recipe for the machine: cpu or gpu (configs/profiles/; default: from the device)")

    bench = commands.add_parser("bench", help="build the public stand-in benchmark (or a small test fixture)")
    bench_commands = bench.add_subparsers(dest="bench_command", metavar="<bench command>", required=True)
    build = bench_commands.add_parser("build", help="fetch the public sources and build DIR/training + DIR/truth")
    build.add_argument("--out", required=True, help="output folder (training/ and truth/ are written inside)")
    build.add_argument("--seed", type=int, default=0, help="benchmark seed (same seed, byte-identical build)")
    build.add_argument("--cache", help="download cache folder (default $ILLUSTRA_CACHE or ~/.cache/illustra)")
    build.add_argument("--small", action="store_true", help="a few hundred files, for a quick real-data check")
    build.add_argument("--workers", type=int, default=0, help="processes (0 = one per core)")
    build.add_argument("--force", action="store_true", help="rebuild even if DIR already holds this build")
    build.set_defaults(run=_cmd_bench_build)
    holdout = bench_commands.add_parser("holdout", help="a second folder from unseen sources: icon styles, photo cut-outs")
    holdout.add_argument("--out", required=True, help="output folder (training/ and truth/ inside)")
    holdout.add_argument("--part", choices=["dev", "test"], default="dev",
                         help="dev may inform the detector's design; test is scored once (other icons and photos)")
    holdout.add_argument("--seed", type=int, default=0, help="seed of the assembly")
    holdout.add_argument("--photos", type=float, help="share of photographs in the folder (default 0.12)")
    holdout.add_argument("--cutouts", type=float, help="share of the photos cut out onto white (default 0.5)")
    holdout.add_argument("--duplicates", type=float, default=0.0,
                         help="share of injected duplicate copies, as in the benchmark (0.06), to check the duplicate "
                              "detector on unseen sources")
    holdout.add_argument("--cache", help="download cache folder (default $ILLUSTRA_CACHE or ~/.cache/illustra)")
    holdout.add_argument("--workers", type=int, default=0, help="processes (0 = one per core)")
    holdout.add_argument("--force", action="store_true", help="rebuild even if DIR already holds this build")
    holdout.set_defaults(run=_cmd_bench_holdout)
    fixture = bench_commands.add_parser("fixture", help="a small synthetic folder with the same layout and truth")
    fixture.add_argument("--out", required=True, help="output folder (training/ and truth/ inside)")
    fixture.add_argument("--seed", type=int, default=0, help="seed of the synthetic drawings")
    fixture.add_argument("--classes", type=int, default=5, help="class folders")
    fixture.add_argument("--per-class", type=int, default=12, help="drawings per class")
    fixture.set_defaults(run=_cmd_bench_fixture)

    scan = commands.add_parser("scan", help="decode every image once: manifest.csv + pixel cache + problems.csv")
    scan.add_argument("data", help="folder of class sub-folders")
    scan.add_argument("--out", required=True, help="work folder for the manifest and cache")
    scan.add_argument("--config", default="data.yaml", help="YAML config (default configs/data.yaml)")
    scan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    scan.set_defaults(run=_cmd_scan)

    pretrain = commands.add_parser("pretrain", help="train the SimCLR encoder from random initialisation",
                                   parents=[machine])
    pretrain.add_argument("--data", required=True, help="folder of class sub-folders (all images are used)")
    pretrain.add_argument("--out", required=True, help="run folder: checkpoint, encoder.safetensors, tb/")
    pretrain.add_argument("--work", help=WORK_HELP)
    pretrain.add_argument("--config", default="ssl.yaml", help="YAML config (default configs/ssl.yaml)")
    pretrain.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    pretrain.add_argument("--time-budget", type=budget_text, help="stop and anneal within this time, e.g. 20m")
    pretrain.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.safetensors")
    pretrain.set_defaults(run=_cmd_pretrain)

    embed = commands.add_parser("embed", help="L2-normalised embeddings for every manifest row",
                                   parents=[machine])
    embed.add_argument("--data", required=True, help="folder of class sub-folders")
    embed.add_argument("--encoder", default="checkpoints/encoder.safetensors", help="SSL encoder weights")
    embed.add_argument("--out", required=True, help="folder for embeddings.npy + manifest")
    embed.add_argument("--work", help=WORK_HELP)
    embed.set_defaults(run=_cmd_embed)

    curate = commands.add_parser("curate", help="duplicates, photos, imbalance plan, cleaned manifest, report.html",
                                   parents=[machine])
    curate.add_argument("data", help="folder of class sub-folders (never modified)")
    curate.add_argument("--out", required=True, help="folder for every curation output")
    curate.add_argument("--encoder", default=SHIPPED_ENCODER, help="encoder weights for the embeddings")
    curate.add_argument("--work", help=WORK_HELP)
    curate.add_argument("--config", default="curation.yaml", help="YAML config in configs/")
    curate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. duplicates.max_patch=0.03 (repeatable)")
    curate.add_argument("--only", action="append", choices=["duplicates", "photos", "report"],
                        help="run only these jobs (repeatable); duplicates always run")
    curate.set_defaults(run=_cmd_curate)

    finetune = commands.add_parser("finetune", help="linear head / full fine-tune on the cleaned, balanced set",
                                   parents=[machine])
    finetune.add_argument("--curation", required=True, help="folder written by `illustra curate` (clean.csv)")
    finetune.add_argument("--out", required=True, help="run folder: classifier.safetensors, checkpoint, tb/, metrics.json")
    finetune.add_argument("--data", help="the data folder (for the record; pixels come from --work)")
    finetune.add_argument("--encoder", default=SHIPPED_ENCODER, help="SSL encoder the network starts from")
    finetune.add_argument("--work", help="manifest + pixel cache folder (default: the one the curation was made from)")
    finetune.add_argument("--config", default="finetune.yaml", help="YAML config in configs/")
    finetune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a config key, e.g. epochs=10 (repeatable)")
    finetune.add_argument("--time-budget", type=budget_text, help="e.g. 10m")
    finetune.add_argument("--from-scratch", action="store_true", help="random encoder init, same recipe")
    finetune.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.safetensors")
    finetune.add_argument("--all", action="store_true", help="train on every cleaned image (no test score)")
    finetune.add_argument("--split-seed", type=int, metavar="N",
                          help="seed of the train / val / test split (default: the config's seed); fix it to "
                               "compare training seeds on one split")
    finetune.set_defaults(run=_cmd_finetune)

    evaluate = commands.add_parser("evaluate", help="classification report of a weights file on a class-folder tree")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(run=_cmd_evaluate)

    run = commands.add_parser("run", help="your folder end to end: scan, pretrain, embed, curate, finetune, export, "
                              "evaluate on the held-out test split", parents=[machine])
    run.add_argument("data", help="your folder of class sub-folders (only read)")
    run.add_argument("--out", required=True, help="work folder for every stage's output (outside the data folder)")
    run.add_argument("--encoder", help="reuse an SSL encoder (.safetensors) instead of pretraining one here")
    run.add_argument("--from", dest="start_from", metavar="STAGE",
                     help="redo this stage and every later one (scan, pretrain, embed, curate, finetune, export, "
                          "evaluate); default: only what changed")
    run.add_argument("--ssl-budget", type=budget_text, help="SimCLR time budget, e.g. 25m (default: the profile's)")
    run.add_argument("--finetune-budget", type=budget_text, help="fine-tuning time budget, e.g. 20m (default: the profile's)")
    run.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                     help="override a stage's config key, e.g. finetune.epochs=10 or curate.photos.texture_steps=200")
    run.set_defaults(run=_cmd_run)

    export = commands.add_parser("export", help="a fine-tuning run's train / val / test split as class-folder trees")
    export.add_argument("run_dir", metavar="RUN", help="fine-tuning run folder (split.csv, metrics.json, classifier)")
    export.add_argument("--to", required=True, help="new folder for train/, val/, test/ and their CSV lists")
    export.add_argument("--copy", action="store_true", help="copy the files (default: hard links, never moves)")
    export.set_defaults(run=_cmd_export)

    predict = commands.add_parser("predict", help="class and probability per image")
    predict.add_argument("--weights", default="checkpoints/classifier.safetensors", help="classifier weights")
    predict.add_argument("images", nargs="+", help="image files")
    predict.set_defaults(run=_cmd_predict)

    experiment = commands.add_parser("experiment", help="run an experiment plan: summary.csv + analysed report.html",
                                   parents=[machine])
    experiment.add_argument("plan", nargs="?", default="experiments.yaml", help="plan YAML (default configs/experiments.yaml)")
    experiment.add_argument("--out", required=True, help="folder: runs/<name>/, summary.csv, analysis.json, report.html")
    experiment.add_argument("--curation", default="work/curation", help="folder written by `illustra curate`")
    experiment.add_argument("--work", help="manifest + pixel cache folder (default: the one the curation was made from)")
    experiment.add_argument("--encoder", help="encoder weights for the runs that do not name their own")
    experiment.add_argument("--variant", help="a named variant of the plan (its `variants:` section), e.g. hour")
    experiment.add_argument("--quick", action="store_true", help="the plan's quick variant (minutes); = --variant quick")
    experiment.add_argument("--only", action="append", help="only these runs or factors (repeatable)")
    experiment.add_argument("--styles", help="truth CSV (path, style), e.g. BENCH/truth/sources.csv: turns on the "
                            "plan's leave-one-style-out column (plan key `loso`)")
    experiment.add_argument("--no-progress", action="store_true", help="no progress bars (logs)")
    experiment.set_defaults(run=_cmd_experiment)

    pipeline = commands.add_parser("pipeline", help="main job: bench build -> scan -> every stage that exists",
                                   parents=[machine])
    pipeline.add_argument("--out", default="work", help="folder for every output (default work/)")
    pipeline.add_argument("--seed", type=int, default=0, help="benchmark seed")
    pipeline.add_argument("--retrain", action="store_true", help="retrain everything instead of reusing checkpoints/")
    pipeline.add_argument("--ssl-budget", type=budget_text, help="time budget of SSL pretraining with --retrain "
                          "(default: the profile's, 25m on cpu, 5m on gpu)")
    pipeline.add_argument("--finetune-budget", type=budget_text, help="time budget of fine-tuning with --retrain "
                          "(default: the profile's, 20m on cpu, 3m on gpu)")
    pipeline.set_defaults(run=_cmd_pipeline)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `illustra` console script."""
    import os

    from illustra.train.device import DEVICE_ENV, DeviceError, pick_device
    from illustra.train.profiles import PROFILE_ENV, resolve_profile

    args = build_parser().parse_args(argv)
    if getattr(args, "device", None):
        os.environ[DEVICE_ENV] = args.device  # every stage of this process (and of `pipeline`) computes there
    if getattr(args, "profile", None):
        os.environ[PROFILE_ENV] = args.profile
    if hasattr(args, "device"):
        try:
            pick_device()
            resolve_profile()
        except (DeviceError, ValueError) as exc:
            print(f"illustra {args.command}: {exc}", file=sys.stderr)
            return 2
    from illustra.errors import UserError

    try:
        return int(args.run(args) or 0)
    except (UserError, FileNotFoundError) as exc:  # bad input, a missing path or a stale artefact: one sentence
        print(f"illustra {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

