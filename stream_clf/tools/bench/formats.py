"""JSON vs registry-framed events end to end (``stream-clf bench --event-formats``): the same texts
through the same worker, once written as JSON and once as Avro by confluent-kafka's own serializer,
in alternating order, three rounds; the medians are compared, so a noisy machine moves both alike.

The worker runs with ``--schema-registry`` in both: the Avro events' schema is fetched once, then
each costs its decode. A Schema Registry is started here (Apicurio, as the tests do) unless one is
named.
"""

import contextlib
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from stream_clf.tools.bench.scaffold import Bench
from stream_clf.tools.bench.streaming import EventEncoder, json_event, measure_throughput
from stream_clf.tools.broker import free_port

__all__ = ["EVENT_FORMATS", "ROUNDS", "measure_event_formats", "registry_for"]

EVENT_FORMATS = ("json", "avro")
ROUNDS = 3
_AVRO_EVENT = {
    "type": "record",
    "name": "TextEvent",
    "namespace": "dev.stream_clf.bench",
    "fields": [{"name": "id", "type": "string"}, {"name": "text", "type": "string"}],
}


@contextlib.contextmanager
def registry_for(url: str | None, root: Path, track: Any) -> Iterator[str]:
    """The Schema Registry to measure with: ``url``, or a local Apicurio started under ``root`` (and stopped after)."""
    if url is not None:
        yield url
        return
    from stream_clf.tools.registry import LocalSchemaRegistry

    registry = LocalSchemaRegistry(root / "registry" / "registry.log", port=free_port())
    advance = track("starting a local Schema Registry", 1)
    registry.start(quiet=False)
    advance(1)
    try:
        yield registry.url
    finally:
        registry.stop()


def _avro_events(registry: str, topic: str) -> EventEncoder:
    """Events written as a registry estate's producer writes them: Avro, subject ``<topic>-value``."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    client = SchemaRegistryClient({"url": registry, "timeout": 10})  # a request never answered is retried
    serialize = AvroSerializer(client, orjson.dumps(_AVRO_EVENT).decode())
    context = SerializationContext(topic, MessageField.VALUE)
    return lambda event_id, text: serialize({"id": event_id, "text": text}, context)


def measure_event_formats(bench: Bench, command: list[str], texts: Sequence[str], registry: str) -> dict[str, Any]:
    """Throughput of JSON and Avro events, :data:`ROUNDS` rounds in alternating order; their medians,
    the ratio, and whether both formats got the same labels."""
    rates: dict[str, list[float]] = {name: [] for name in EVENT_FORMATS}
    labels: dict[str, dict[str, str]] = {}
    for round_ in range(ROUNDS):
        order = EVENT_FORMATS if round_ % 2 == 0 else tuple(reversed(EVENT_FORMATS))
        for name in order:
            log = f"formats-{name}-{round_ + 1}.log"
            with bench.serving([*command, "--schema-registry", registry], log) as worker:
                encode = json_event if name == "json" else _avro_events(registry, worker.input)
                advance = bench.track(f"{name} events, round {round_ + 1} of {ROUNDS}", len(texts))
                result = measure_throughput(bench.bootstrap, worker, texts, bench.timeout, advance, encode=encode)
            rates[name].append(result.events_per_second)
            labels.setdefault(name, result.labels)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    agree = sum(labels["avro"].get(event_id) == label for event_id, label in labels["json"].items())
    return {
        "rounds": rates,
        "median_events_per_second": medians,
        "avro_vs_json": medians["avro"] / medians["json"],
        "labels_agree": agree / len(labels["json"]),
    }
