"""Which model serves each event: the models in service, replaced whole when one is swapped.

::

    event ─► routed topic? ──yes──► that topic's model (--route TOPIC=MODEL)
                 │ no
                 ▼
             key in the canary share? ──yes──► the canary (--canary-model, --canary-share)
                 │ no
                 ▼
             the default model (--model, or the last swap)

    and, beside whichever answered, the shadow (--shadow-model): its answer is only compared

A :class:`ModelSet` never changes: a swap builds a new one and :class:`ModelHolder` hands it out
from then on. The batch step takes one set per micro-batch, when the batch is formed, so a swap
falls between two batches and every event of a batch is answered by the models of one moment.
The canary share is by key hash: one key's events always go to the same model, so they keep
their order, and the share is the same on every worker of a group.
"""

import logging
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from stream_clf.errors import ModelError, fails_alone
from stream_clf.kafka.control_records import DEFAULT_TARGET
from stream_clf.model.bundle import ModelBundle, load_bundle
from stream_clf.model.catalog import resolve_model
from stream_clf.model.classifier import Classifier
from stream_clf.worker.events import Source

__all__ = ["CANARY_BUCKETS", "DEFAULT_TARGET", "ModelHolder", "ModelLoader", "ModelSet", "ServedModel", "canary_bucket"]

log = logging.getLogger(__name__)

# Keys are hashed into this many buckets; the canary serves the first share of them.
CANARY_BUCKETS = 10_000


@dataclass(frozen=True, eq=False)
class ServedModel:
    """A loaded classifier, and what it was loaded from (a bundle path or a built model's name)."""

    classifier: Classifier
    source: str

    @property
    def bundle(self) -> ModelBundle:
        return self.classifier.bundle

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def version(self) -> str:
        return self.bundle.version


def canary_bucket(key: bytes | None, source: Source) -> int:
    """The bucket of an event's key (CRC-32, so every worker and every replay agrees); a keyless
    event is bucketed by where it was read, since no order binds it to others."""
    data = key if key is not None else source.default_id.encode()
    return zlib.crc32(data) % CANARY_BUCKETS


@dataclass(frozen=True)
class ModelSet:
    """The models in service at one moment."""

    default: ServedModel
    routes: Mapping[str, ServedModel] = field(default_factory=dict)
    canary: ServedModel | None = None
    canary_share: float = 0.0
    shadow: ServedModel | None = None

    def serving(self, source: Source, key: bytes | None) -> ServedModel:
        """The model that answers the event read at ``source`` with ``key``."""
        routed = self.routes.get(source.topic)
        if routed is not None:
            return routed
        if self.canary is not None and canary_bucket(key, source) < self.canary_share * CANARY_BUCKETS:
            return self.canary
        return self.default

    def target(self, target: str) -> ServedModel | None:
        """The model a swap of ``target`` replaces: the default (``*``) or a topic's route."""
        return self.default if target == DEFAULT_TARGET else self.routes.get(target)

    def with_model(self, target: str, model: ServedModel) -> "ModelSet":
        """This set with ``target`` (``*`` or a topic) served by ``model``."""
        if target == DEFAULT_TARGET:
            return replace(self, default=model)
        return replace(self, routes={**self.routes, target: model})

    def in_service(self) -> list[tuple[str, str, ServedModel]]:
        """Every model in service as (role, topic, model); the topic is ``*`` but for routes."""
        models = [("default", DEFAULT_TARGET, self.default)]
        models += [("route", topic, model) for topic, model in sorted(self.routes.items())]
        if self.canary is not None:
            models.append(("canary", DEFAULT_TARGET, self.canary))
        if self.shadow is not None:
            models.append(("shadow", DEFAULT_TARGET, self.shadow))
        return models


class ModelHolder:
    """The model set in service. :meth:`swap` replaces it whole; readers take :attr:`current` once per
    micro-batch (a plain attribute read, so the hot path takes no lock)."""

    def __init__(self, models: ModelSet, on_change: Callable[[ModelSet], None] = lambda _: None) -> None:
        self.current = models
        self._on_change = on_change
        self._lock = threading.Lock()
        on_change(models)

    def swap(self, target: str, model: ServedModel) -> ServedModel | None:
        """Serve ``target`` with ``model`` from the next micro-batch on; returns the model it replaced."""
        with self._lock:
            previous = self.current.target(target)
            self.current = self.current.with_model(target, model)
            self._on_change(self.current)
        return previous


class ModelLoader:
    """Loads, checks and warms up a bundle the way the worker serves it.

    ``check`` is told the loaded bundle and raises :class:`ConfigError` when the worker's settings
    do not fit it (thresholds naming labels it lacks, say). Warming up runs the model once on a full
    bucket of short texts (short: a model may fail on long ones, which is an event's failure, not the
    model's), so that its first micro-batch is not also the one that allocates its buffers.
    """

    def __init__(
        self,
        build: Callable[[ModelBundle], Classifier],
        check: Callable[[ModelBundle], None] = lambda _: None,
    ) -> None:
        self._build = build
        self._check = check

    def __call__(self, source: str) -> ServedModel:
        """The bundle ``source`` names (a directory, or a built model's name), loaded to serve."""
        return self.serve(load_bundle(resolve_model(Path(source))), source)

    def serve(self, bundle: ModelBundle, source: str) -> ServedModel:
        """``bundle`` (read from ``source``) checked, built and warmed up."""
        started = time.perf_counter()
        self._check(bundle)
        classifier = self._build(bundle)
        try:
            classifier.predict(["ok"] * classifier.bucket_size)
        except BaseException as error:  # ONNX Runtime raises its own exception types; tokenizers may panic
            if not fails_alone(error):
                raise
            detail = " ".join(str(error).split())[:300]
            raise ModelError(
                f"model bundle '{bundle.path}': fails on a full bucket of short texts ({detail})"
            ) from None
        log.info(
            "event=model_loaded model=%s model_version=%s source=%s lanes=%d wide_rows=%s seconds=%.2f",
            bundle.name,
            bundle.version,
            source,
            classifier.lanes,
            classifier.layout.wide_rows or "none",
            time.perf_counter() - started,
        )
        return ServedModel(classifier, source)
