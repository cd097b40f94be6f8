"""Subcommands that make and measure model bundles: export, quantize, models, eval."""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from stream_clf.cli.common import (
    Parser,
    add_connection,
    add_data_columns,
    add_labelled_data,
    connection_from,
    needs_extra,
    positive_int,
    progress_bars,
    read_texts,
    tracker,
)
from stream_clf.errors import ConfigError
from stream_clf.model.catalog import SHAPES
from stream_clf.model.windows import Truncation, Windowing
from stream_clf.tools.build.quantization import QuantizationReport

if TYPE_CHECKING:
    from stream_clf.model.classifier import Classifier
    from stream_clf.tools.build.training import Recipe
    from stream_clf.tools.evaluation.evaluate import Dataset

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    _export(
        commands.add_parser(
            "export",
            help="export a Hugging Face checkpoint to a model bundle",
            description="Export a sequence classifier (hub id or checkpoint directory) to a bundle the worker"
            " serves, checked against PyTorch. Needs pip install 'stream-clf[export]'.",
        )
    )
    _quantize(commands.add_parser("quantize", help="make an int8 copy of an fp32 bundle"))
    models = commands.add_parser("models", help="build the trained default models, offline")
    actions = models.add_subparsers(dest="models_command", required=True, metavar="ACTION", parser_class=Parser)
    _models_build(actions.add_parser("build", help="build a model (fp32 and int8 bundles) into the cache"))
    _models_list(actions.add_parser("list", help="the models and whether they are built"))
    _eval(commands.add_parser("eval", help="score a bundle on a labelled CSV/JSONL file, directly or through Kafka"))


def _print_int8(report: QuantizationReport) -> None:
    print(
        f"  int8: max |logit diff| vs fp32 {report.max_logit_diff:.3g};"
        f" labels agree with fp32 on {report.label_agreement:.1%} of {report.texts} texts"
    )


def _export(parser: Parser) -> None:
    parser.add_argument("source", help="Hugging Face model id, or a checkpoint directory")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write (replaced if it exists)")
    parser.add_argument("--labels", type=lambda t: [p.strip() for p in t.split(",")], help="label names, in order")
    parser.add_argument("--name", help="bundle name in results (default: the source's last path part)")
    parser.add_argument("--max-length", type=positive_int, help="tokens per text (default: 512, or the positions)")
    parser.add_argument("--lowercase", action="store_true", help="lowercase input (Spark NLP's caseSensitive=false)")
    parser.add_argument("--quantize", choices=["int8"], help="ONNX Runtime dynamic quantization")
    parser.add_argument(
        "--fuse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fuse attention for ONNX Runtime on BERT, DistilBERT, RoBERTa and ALBERT (default: on;"
        " --no-fuse keeps the graph as exported)",
    )
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest |logit diff| allowed (default: 1e-3)")
    parser.add_argument("--texts", type=Path, help="file of texts, one per line, for the parity and int8 checks")

    def run(args: argparse.Namespace) -> int:
        try:
            from stream_clf.tools.build.export import PARITY_TEXTS, export_checkpoint
        except ImportError as error:
            raise needs_extra(error, "export") from None
        with progress_bars() as progress:
            task = progress.add_task("exporting", total=None)
            report = export_checkpoint(
                args.source,
                args.out,
                labels=args.labels,
                name=args.name,
                max_length=args.max_length,
                lowercase=args.lowercase,
                quantize=args.quantize,
                fuse=args.fuse,
                tolerance=args.tolerance,
                texts=read_texts(args.texts) if args.texts else PARITY_TEXTS,
                step=lambda what: progress.update(task, description=what),
            )
            progress.update(task, description="exported", total=1, completed=1)
        case = "sensitive" if report.case_sensitive else "insensitive"
        print(f"bundle {report.bundle}: labels {', '.join(report.labels)}; inputs {', '.join(report.inputs)}")
        print(
            f"  max_length {report.max_length}, case {case}; parity with PyTorch: max |logit diff|"
            f" {report.parity_max_logit_diff:.2e} (tolerance {args.tolerance:g})"
        )
        if report.fusion:
            print("  fused for ONNX Runtime: " + ", ".join(f"{name} {count}" for name, count in report.fusion.items()))
        elif args.fuse:
            print("  not fused: the graph is kept as exported (another architecture, or nothing matched)")
        if report.int8:
            _print_int8(report.int8)
        return 0

    parser.set_defaults(run=run, parser=parser)


def _quantize(parser: Parser) -> None:
    parser.add_argument("bundle", type=Path, help="fp32 bundle directory (or a built model's name)")
    parser.add_argument("--out", type=Path, required=True, help="int8 bundle directory to write")
    parser.add_argument("--texts", type=Path, help="file of texts, one per line, to compare int8 with fp32 on")

    def run(args: argparse.Namespace) -> int:
        from stream_clf.model.catalog import resolve_model
        from stream_clf.tools.build.quantization import SAMPLE_TEXTS, quantize_bundle

        source = resolve_model(args.bundle)
        with progress_bars() as progress:
            progress.add_task("quantizing to int8", total=None)
            report = quantize_bundle(source, args.out, read_texts(args.texts) if args.texts else SAMPLE_TEXTS)
        print(f"bundle {args.out} (int8) from {source}")
        _print_int8(report)
        return 0

    parser.set_defaults(run=run, parser=parser)


def _models_build(parser: Parser) -> None:
    parser.add_argument("name", nargs="?", choices=["news", "sentiment", "imdb"], help="a built-in model")
    parser.add_argument("--quick", action="store_true", help="imdb only: 800 reviews at 128 tokens (2 min), for CI")
    parser.add_argument("--force", action="store_true", help="rebuild even if an identical build is cached")
    parser.add_argument(
        "--min-accuracy",
        type=_fraction,
        help="exit 1 when the fp32 held-out accuracy is below this fraction (a gate for CI), e.g. 0.9",
    )
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        help="instead of NAME: a reference card's model shape with random weights (cost, not accuracy):"
        " fp32 and int8 bundles at 512 tokens, and at 256 with head+tail",
    )
    own = parser.add_argument_group("a model from your own labelled file (instead of NAME)")
    own.add_argument("--data", type=Path, help="CSV, TSV or JSONL file with a text and a label per row")
    own.add_argument("--name", dest="model_name", help="the model's name in the cache and in results")
    add_data_columns(own)
    own.add_argument("--fine-tune", action="store_true", help="train every encoder layer (default: a frozen head)")
    own.add_argument("--max-length", type=positive_int, default=128, help="tokens per text (default: 128)")
    own.add_argument("--epochs", type=positive_int, default=2, help="passes when fine-tuning (default: 2)")

    def run(args: argparse.Namespace) -> int:
        try:
            from stream_clf.tools.build.training import build_data_model, build_trained_model
        except ImportError as error:
            raise needs_extra(error, "models") from None
        if args.shape:
            return _build_shape(args)
        name = _checked_build(args)
        with progress_bars() as progress:
            if args.data:
                report = build_data_model(
                    args.data,
                    name,
                    text_columns=args.text_column or ["text"],
                    label_column=args.label_column,
                    recipe=_data_recipe(args),
                    force=args.force,
                    progress=tracker(progress),
                )
            else:
                report = build_trained_model(name, force=args.force, progress=tracker(progress))
        state = "already built with this recipe (cached)" if report.cached else f"trained on {report.train_size} texts"
        print(f"{name}: {state}")
        for precision, bundle in report.bundles.items():
            print(f"  {precision}: {bundle}  held-out accuracy {report.reports[precision].accuracy:.2%}")
        print(f"  int8 labels agree with fp32 on {report.int8_agreement:.2%} of the held-out split\n")
        print(report.reports["fp32"].format())
        print(f"\nreproduce: stream-clf eval --model {name} --data {report.heldout}")
        accuracy = report.reports["fp32"].accuracy
        if args.min_accuracy is not None and accuracy < args.min_accuracy:
            print(f"{name}: held-out accuracy {accuracy:.2%} is below --min-accuracy {args.min_accuracy:.2%}")
            return 1
        return 0

    parser.set_defaults(run=run, parser=parser)


def _build_shape(args: argparse.Namespace) -> int:
    from stream_clf.tools.build.shapes import build_shape

    if args.name or args.data or args.quick or args.min_accuracy is not None:
        raise ConfigError("--shape builds a random-weight model: give it alone (with --force at most)")
    with progress_bars() as progress:
        build = build_shape(args.shape, force=args.force, progress=tracker(progress))
    state = "already built (cached)" if build.cached else "built"
    print(f"{args.shape}: {state}; {build.parameters / 1e6:.0f}M parameters, the configuration of {build.source}")
    print("  random weights: for measuring cost (speed, memory), never accuracy")
    for (length, precision), bundle in build.bundles.items():
        print(f"  {precision} at {length} tokens: {bundle}")
    print(f"\nmeasure it: stream-clf bench --shape {args.shape}")
    return 0


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def _checked_build(args: argparse.Namespace) -> str:
    """The model's name, once the flags are known to go together."""
    if args.data:
        if args.name or args.quick:
            raise ConfigError("--data builds your own model: give --name, not a built-in NAME or --quick")
        if not args.model_name:
            raise ConfigError("--data needs --name NAME for the model")
        return args.model_name
    if not args.name:
        raise ConfigError("give a built-in model (news, sentiment, imdb), --shape SHAPE or --data FILE --name NAME")
    if args.model_name or args.fine_tune or args.text_column:
        raise ConfigError("--name, --fine-tune and --text-column go with --data FILE")
    if args.quick and args.name != "imdb":
        raise ConfigError("--quick is for imdb only (the other built-in models take minutes already)")
    return "imdb-quick" if args.quick else args.name


def _data_recipe(args: argparse.Namespace) -> "Recipe":
    from stream_clf.tools.build.finetune import FineTuning
    from stream_clf.tools.build.training import Recipe

    if not args.fine_tune:
        return Recipe(args.max_length)
    return Recipe(args.max_length, FineTuning(max_length=args.max_length, epochs=args.epochs))


def _models_list(parser: Parser) -> None:
    def run(_: argparse.Namespace) -> int:
        from stream_clf.model.catalog import TRAINED, bundle_name, models_dir

        for shape, description in SHAPES.items():
            state = "built" if (models_dir() / bundle_name(shape, "int8")).is_dir() else "not built"
            print(f"{shape:15s} random weights, cost only: {description}; {state} (models build --shape {shape})")
        for name, model in TRAINED.items():
            built = [p for p in ("fp32", "int8") if (models_dir() / bundle_name(name, p)).is_dir()]
            state = f"built ({', '.join(built)}) in {models_dir()}" if built else "not built"
            print(f"{name:10s} {model.description}; {state}")
        evaluations = sorted(models_dir().glob("*-evaluation.json")) if models_dir().is_dir() else []
        for name in (path.name.removesuffix("-evaluation.json") for path in evaluations):
            if name not in TRAINED:
                print(f"{name:10s} built from your data (models build --data) in {models_dir()}")
        return 0

    parser.set_defaults(run=run, parser=parser)


ALL_STRATEGIES = "all"


def _truncation_choice(text: str) -> Truncation | str:
    if text == ALL_STRATEGIES:
        return text
    try:
        return Truncation(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join([*Truncation, ALL_STRATEGIES])}") from None


def _eval(parser: Parser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="bundle directory, or a built model's name")
    add_labelled_data(parser)
    parser.add_argument("--batch-size", type=positive_int, default=32, help="(default: 32)")
    parser.add_argument(
        "--truncation",
        type=_truncation_choice,
        metavar="{" + ",".join([*Truncation, ALL_STRATEGIES]) + "}",
        help="texts past max_length (default: the bundle's, else head); all: score every strategy in one table",
    )
    parser.add_argument("--stride", type=int, help="window overlap in tokens (default: a quarter of the window)")
    parser.add_argument("--max-windows", type=positive_int, default=16, help="(default: 16)")
    parser.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    parser.add_argument("--through-kafka", action="store_true", help="classify through a running worker as well")
    add_connection(parser)
    parser.add_argument("--input", default="texts", help="the worker's input topic (default: texts)")
    parser.add_argument("--output", default="texts.labeled", help="the worker's output (default: texts.labeled)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the results (default: 600)")
    parser.set_defaults(run=_run_eval, parser=parser)


def _compare_truncations(classifier: "Classifier", dataset: "Dataset", args: argparse.Namespace) -> int:
    from stream_clf.tools.evaluation.truncation import compare_truncations

    with progress_bars() as progress:
        table = compare_truncations(classifier, dataset, args.batch_size, tracker(progress))
    bundle = classifier.bundle
    print(f"{bundle.name} ({bundle.precision}, version {bundle.version}) on {args.data}, every truncation\n")
    print(table.format())
    if args.json:
        document = {"model": bundle.name, "model_version": bundle.version, "data": str(args.data)}
        args.json.write_bytes(orjson.dumps({**document, "truncation": table.as_dict()}, option=orjson.OPT_INDENT_2))
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from stream_clf.model.bundle import load_bundle
    from stream_clf.model.catalog import resolve_model
    from stream_clf.model.classifier import Classifier
    from stream_clf.tools.evaluation.evaluate import (
        agreement,
        check_labels,
        predict_direct,
        predict_through_kafka,
        read_dataset,
    )
    from stream_clf.tools.evaluation.scoring import classification_report

    every_strategy = args.truncation == ALL_STRATEGIES
    if every_strategy and args.through_kafka:
        raise ConfigError("--truncation all compares strategies here; --through-kafka checks the worker's one")
    windowing = Windowing(None if every_strategy else args.truncation, args.stride, args.max_windows)
    classifier = Classifier(load_bundle(resolve_model(args.model)), windowing=windowing)
    bundle = classifier.bundle
    dataset = read_dataset(args.data, args.text_column or ["text"], args.label_column, args.label_map)
    check_labels(dataset, classifier.labels, args.data)
    if every_strategy:
        return _compare_truncations(classifier, dataset, args)
    document: dict[str, object] = {"model": bundle.name, "model_version": bundle.version, "data": str(args.data)}
    with progress_bars() as progress:
        task = progress.add_task("classifying directly", total=len(dataset.texts))
        direct = predict_direct(classifier, dataset.texts, args.batch_size, lambda n: progress.advance(task, n))
        predicted = [p.label for p in direct]
        same = None
        if args.through_kafka:
            task = progress.add_task("classifying through Kafka", total=len(dataset.texts))
            streamed = predict_through_kafka(
                connection_from(args),
                args.input,
                args.output,
                dataset.texts,
                model_version=bundle.version,
                timeout=args.timeout,
                advance=lambda n: progress.advance(task, n),
            )
            predicted = [r["label"] for r in streamed]
            same = agreement(direct, streamed)
            document["through_kafka"] = {"same_label": same.same_label, "max_score_diff": same.max_score_diff}
    report = classification_report(dataset.labels, predicted, classifier.labels)
    how = "through Kafka" if same else "directly"
    print(f"{bundle.name} ({bundle.precision}, version {bundle.version}) on {args.data}, {how}")
    print(f"accuracy: {report.accuracy:.4f} ({report.correct}/{report.total})\n")
    print(report.format())
    if same:
        print(
            f"\nstreaming vs direct: same label for {same.same_label}/{same.total} events,"
            f" max |score diff| {same.max_score_diff:.2g}"
        )
    if args.json:
        document["report"] = report.as_dict()
        args.json.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    if same and same.same_label != same.total:
        raise ConfigError("the streaming path disagreed with the direct path; see above")
    return 0
