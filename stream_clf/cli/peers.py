"""``stream-clf spark-nlp``: models moved to and from Spark NLP, and answers compared with it."""

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from stream_clf.cli.common import Parser, add_data_columns, needs_extra, parse_label_map, positive_int, read_texts
from stream_clf.errors import ConfigError

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``spark-nlp`` and its actions."""
    group = commands.add_parser(
        "spark-nlp",
        help="move models to and from Spark NLP, compare answers with it",
        description="Spark NLP runs in an environment of its own (pyspark, spark-nlp and their jars, set up"
        " in the cache on first use); stream-clf never imports it.",
    )
    actions = group.add_subparsers(dest="spark_nlp_command", required=True, metavar="ACTION", parser_class=Parser)
    _setup(actions.add_parser("setup", help="install Spark NLP's environment into the cache (once)"))
    _export(actions.add_parser("export", help="write the folder Spark NLP's loadSavedModel takes, from a bundle"))
    _import(actions.add_parser("import", help="make a bundle from a classifier Spark NLP saved (ONNX engine)"))
    _compare(
        actions.add_parser(
            "compare",
            help="classify the same texts with stream-clf and Spark NLP: labels, scores, accuracy",
        )
    )


def _setup(parser: Parser) -> None:
    def run(_: argparse.Namespace) -> int:
        from stream_clf.tools.sparknlp.environment import spark_nlp_environment

        environment = spark_nlp_environment()
        print(f"Spark NLP ready: python {environment.python}, {len(environment.jars)} jars")
        return 0

    parser.set_defaults(run=run, parser=parser)


def _export(parser: Parser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="bundle directory, or a built model's name")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (replaced if it exists)")

    def run(args: argparse.Namespace) -> int:
        from stream_clf.model.bundle import load_bundle
        from stream_clf.model.catalog import resolve_model
        from stream_clf.tools.sparknlp.folders import export_for_spark_nlp

        annotator = export_for_spark_nlp(load_bundle(resolve_model(args.model)), args.out)
        print(f"{args.out}: load it with {annotator.name}.loadSavedModel('{args.out}', spark)")
        return 0

    parser.set_defaults(run=run, parser=parser)


def _import(parser: Parser) -> None:
    parser.add_argument("folder", type=Path, help="the folder Spark NLP saved (a model download, unzipped)")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write (replaced if it exists)")

    def run(args: argparse.Namespace) -> int:
        try:
            import javaobj  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as error:
            raise needs_extra(error, "spark-nlp") from None
        from stream_clf.tools.sparknlp.saved import import_from_spark_nlp

        report = import_from_spark_nlp(args.folder, args.out)
        case = "sensitive" if report.case_sensitive else "insensitive"
        print(f"bundle {report.bundle} from {report.annotator}: labels {', '.join(report.labels)}")
        print(f"  max_length {report.max_length}, case {case}, {report.activation}")
        return 0

    parser.set_defaults(run=run, parser=parser)


def _compare(parser: Parser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        required=True,
        help="bundle directory or built model's name; repeat for several (one Spark session)",
    )
    texts = parser.add_mutually_exclusive_group()
    texts.add_argument("--texts", type=Path, help="file of texts, one per line (default: a built-in set)")
    texts.add_argument("--data", type=Path, help="CSV, TSV or JSONL file with text and label: adds accuracy")
    add_data_columns(parser)
    parser.add_argument(
        "--label-map", type=parse_label_map, help="rename --data's labels to the model's: FROM=TO[,...]"
    )
    parser.add_argument("--limit", type=positive_int, help="the first N rows of --data or --texts")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="Spark NLP's batch size (default: 8)")

    def run(args: argparse.Namespace) -> int:
        from stream_clf.model.bundle import load_bundle
        from stream_clf.model.catalog import resolve_model
        from stream_clf.tools.evaluation.evaluate import check_labels, read_dataset
        from stream_clf.tools.sparknlp.environment import spark_nlp_environment
        from stream_clf.tools.sparknlp.parity import PARITY_TEXTS, compare_with_spark_nlp

        gold = None
        if args.data:
            dataset = read_dataset(args.data, args.text_column or ["text"], args.label_column, args.label_map)
            texts, gold = dataset.texts[: args.limit], dataset.labels[: args.limit]
        else:
            texts = (read_texts(args.texts) if args.texts else list(PARITY_TEXTS))[: args.limit]
        bundles = {}
        for model in args.model:
            path = resolve_model(model)
            if path.name in bundles:
                raise ConfigError(f"--model {model}: two models named {path.name}")
            bundles[path.name] = path
            if args.data:
                check_labels(dataset, load_bundle(path).labels, args.data)
        environment = spark_nlp_environment()
        console = Console(stderr=True)
        with console.status(f"classifying {len(texts)} texts with stream-clf and with Spark NLP"):
            rows = compare_with_spark_nlp(environment, bundles, texts, gold, batch_size=args.batch_size)
        table = Table(title=f"stream-clf and Spark NLP {_source(args)}")
        for column in ("model", "annotator", "Spark NLP tokenizer", "same labels", "same scores", "max |score diff|"):
            table.add_column(column)
        if gold is not None:
            table.add_column("accuracy Spark NLP")
            table.add_column("stream-clf, head")
            table.add_column("stream-clf as served")
        for row in rows:
            cells = [
                row.model,
                row.annotator,
                row.tokenizer,
                f"{row.same_labels}/{row.texts} ({row.label_agreement:.1%})",
                f"{row.same_scores}/{row.texts}",
                f"{row.max_score_diff:.4f}",
            ]
            if gold is not None:
                cells += [f"{row.spark_accuracy:.2%}", f"{row.head_accuracy:.2%}", f"{row.served_accuracy:.2%}"]
            table.add_row(*cells)
        Console(width=200).print(table)
        print("Spark NLP tokenizers: default = its Tokenizer (the cards' pipeline); model = a RegexTokenizer")
        print("splitting on whitespace and around punctuation, as the models' own tokenizers do. Labels and")
        print("scores are compared with stream-clf keeping each text's first max_length tokens, as Spark NLP does.")
        return 0

    parser.set_defaults(run=run, parser=parser)


def _source(args: argparse.Namespace) -> str:
    if args.data:
        return f"on {args.data}"
    return f"on {args.texts}" if args.texts else "on the built-in texts"
