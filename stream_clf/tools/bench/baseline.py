"""The naive baseline a user would write: a Faust agent calling transformers' pipeline per event.

Run as ``python -m stream_clf.tools.bench.baseline --checkpoint DIR --brokers ... --input ... --output
... --datadir DIR``. Nothing here is tuned on purpose: PyTorch eager, one text at a time, on the event loop,
Faust's default acking. It is what stream-clf is measured against.
"""

import argparse
import sys

import faust
from transformers import pipeline

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="stream_clf.tools.bench.baseline")
    for flag in ("--checkpoint", "--brokers", "--input", "--output", "--dlq", "--group", "--web-port", "--datadir"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args(argv)

    classify = pipeline("text-classification", model=args.checkpoint, device="cpu")
    app = faust.App(
        args.group,
        broker=f"kafka://{args.brokers}",
        value_serializer="json",
        web_port=int(args.web_port),
        consumer_auto_offset_reset="earliest",
        datadir=args.datadir,  # Faust's own tables directory; by default it is made in the working directory
    )
    source, results = app.topic(args.input), app.topic(args.output)

    @app.agent(source)
    async def label(stream: faust.StreamT) -> None:
        async for event in stream:
            answer = classify(event["text"], truncation=True, max_length=args.max_length)[0]
            await results.send(value={"id": event["id"], "label": answer["label"], "score": answer["score"]})

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])
