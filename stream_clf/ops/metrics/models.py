"""The models: which are in service, what they answer and how sure, swaps, shadow agreement, abstentions."""

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stream_clf.ops.metrics.common import CONFIDENCE, SECONDS, histogram_sum, samples, total

__all__ = ["SWAP_OUTCOMES", "ModelMetrics"]

SWAP_OUTCOMES = ("applied", "refused")


class ModelMetrics:
    """What the models in service answer, and how they change."""

    def _register_models(self, r: CollectorRegistry) -> None:
        self.predictions = Counter(
            "stream_clf_predictions", "Results by label and model version", ["model_version", "label"], registry=r
        )
        self.confidence = Histogram(
            "stream_clf_confidence",
            "Score of the predicted label, by model version",
            ["model_version"],
            buckets=CONFIDENCE,
            registry=r,
        )
        self.model_info = Gauge(
            "stream_clf_model_info",
            "The models in service (always 1): role default, route (of a topic), canary or shadow",
            ["model", "version", "precision", "role", "topic"],
            registry=r,
        )
        self.models: list[dict[str, str]] = []
        self.swaps = Counter(
            "stream_clf_model_swaps", "Model swaps asked for, by outcome: applied or refused", ["outcome"], registry=r
        )
        for outcome in SWAP_OUTCOMES:
            self.swaps.labels(outcome=outcome)
        self.swap_seconds = Histogram(
            "stream_clf_model_swap_seconds",
            "Time from a swap's request to its model serving: load, check and warm-up beside the old one",
            buckets=SECONDS,
            registry=r,
        )
        self._last_swap: dict[str, object] | None = None
        self._register_shadow(r)
        self.abstentions = Counter(
            "stream_clf_abstentions",
            "Results below --min-confidence (published, marked, and copied for review)",
            ["model_version", "label"],
            registry=r,
        )
        # Each result touches a few labelled series: their children are looked up once.
        self._predicted: dict[tuple[str, str], Counter] = {}
        self._confidences: dict[str, Histogram] = {}

    def _register_shadow(self, r: CollectorRegistry) -> None:
        self.shadow_comparisons = Counter(
            "stream_clf_shadow_comparisons",
            "Events answered by the live and the shadow model, by both labels",
            ["live_label", "shadow_label", "agree"],
            registry=r,
        )
        self.shadow_seconds = Counter(
            "stream_clf_shadow_seconds", "Time spent tokenizing and classifying for the shadow model", registry=r
        )
        self._compared: dict[tuple[str, str], Counter] = {}

    def in_service(self, models: Iterable[tuple[str, str, str, str, str]]) -> None:
        """The models now in service, as (role, topic, name, version, precision); the others are dropped."""
        self.model_info.clear()
        self.models = []
        for role, topic, name, version, precision in models:
            self.model_info.labels(model=name, version=version, precision=precision, role=role, topic=topic).set(1)
            self.models.append({"role": role, "topic": topic, "name": name, "version": version, "precision": precision})

    def swapped(self, outcome: str, seconds: float, **details: object) -> None:
        """A swap was applied or refused, ``seconds`` after it was asked for."""
        self.swaps.labels(outcome=outcome).inc()
        if outcome == "applied":
            self.swap_seconds.observe(seconds)
        self._last_swap = {"outcome": outcome, "seconds": seconds, "time": time.time(), **details}

    def predicted(self, version: str, label: str, score: float) -> None:
        """Model ``version`` answered ``label`` with ``score``."""
        predicted = self._predicted.get((version, label))
        if predicted is None:
            predicted = self._predicted[version, label] = self.predictions.labels(model_version=version, label=label)
        predicted.inc()
        confidence = self._confidences.get(version)
        if confidence is None:
            confidence = self._confidences[version] = self.confidence.labels(model_version=version)
        confidence.observe(score)

    def abstained(self, version: str, label: str) -> None:
        self.abstentions.labels(model_version=version, label=label).inc()

    def shadow_compared(self, live: str, shadow: str) -> None:
        """The live model answered ``live`` and the shadow model ``shadow`` for one delivered result."""
        compared = self._compared.get((live, shadow))
        if compared is None:
            compared = self._compared[live, shadow] = self.shadow_comparisons.labels(
                live_label=live, shadow_label=shadow, agree=str(live == shadow).lower()
            )
        compared.inc()

    def shadow_agreement(self, inference_seconds: Histogram) -> dict[str, object] | None:
        """Agreement of the live and shadow models, label by label, and the shadow's share of inference."""
        table: dict[str, dict[str, float]] = {}
        for sample in samples(self.shadow_comparisons):
            table.setdefault(sample.labels["live_label"], {})[sample.labels["shadow_label"]] = sample.value
        compared = sum(sum(row.values()) for row in table.values())
        if not compared:
            return None
        agreed = sum(row.get(label, 0.0) for label, row in table.items())
        inference = histogram_sum(inference_seconds)
        shadow = total(self.shadow_seconds)
        return {
            "compared": compared,
            "agreement": agreed / compared,
            "table": table,
            "cost": shadow / inference if inference else None,
        }
