"""What every area of the worker's metrics shares: bucket bounds, and reading a metric's samples back."""

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["CONFIDENCE", "EVENTS", "SECONDS", "TOKENS", "by_label", "gauge_value", "histogram_sum", "samples", "total"]

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
EVENTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKENS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
CONFIDENCE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def samples(metric: Counter | Gauge | Histogram) -> list:
    return [sample for family in metric.collect() for sample in family.samples if not sample.name.endswith("_created")]


def total(counter: Counter) -> float:
    return sum(sample.value for sample in samples(counter))


def by_label(counter: Counter, label: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for sample in samples(counter):
        totals[sample.labels[label]] = totals.get(sample.labels[label], 0.0) + sample.value
    return totals


def gauge_value(gauge: Gauge, topic: str, partition: str) -> float:
    return next(
        (s.value for s in samples(gauge) if s.labels == {"topic": topic, "partition": partition}),
        0.0,
    )


def histogram_sum(histogram: Histogram) -> float:
    return sum(sample.value for sample in samples(histogram) if sample.name.endswith("_sum"))
