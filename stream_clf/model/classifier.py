"""Tokenize, cut to ``max_length``, pad and run a bundle's ONNX classifier; turn logits into scores.

Synchronous and free of Kafka: the worker calls :meth:`Classifier.infer` from executor threads
(ONNX Runtime and the Rust tokenizer release the GIL), tests and ``eval`` call it directly.

Inference runs in *lanes* (:mod:`~stream_clf.model.lanes`): a micro-batch's length buckets go to
``lanes`` threads, each running its own ``Session.run`` on ``threads / lanes`` cores, except that a
fused model's batches of long rows run their calls one at a time on every core.
"""

import copy
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from stream_clf.errors import ConfigError, ModelError, fails_alone
from stream_clf.model.buckets import length_buckets
from stream_clf.model.bundle import ModelBundle
from stream_clf.model.cuts import Cut
from stream_clf.model.lanes import CoreGate, Layout
from stream_clf.model.windows import Plan, Row, Template, Truncation, Windowing, plan, reach

__all__ = ["Classifier", "EncodedBatch", "Prediction"]

_REQUIRED_INPUTS = ("input_ids", "attention_mask")
_KNOWN_INPUTS = (*_REQUIRED_INPUTS, "token_type_ids")
_NUMPY_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
_SCORE_DIGITS = 6
DEFAULT_THRESHOLD = 0.5
DEFAULT_WINDOWING = Windowing()
# Most rows, and most padded tokens, per ONNX Runtime call. The perf notes found 8 rows the sweet
# spot on 2 cores (32 was 2-23% slower per sequence at 256+ tokens); 8 rows of 512 fit the token cap.
DEFAULT_BUCKET_SIZE = 8
DEFAULT_BUCKET_TOKENS = 4096


@dataclass(frozen=True, slots=True)
class Prediction:
    """The classifier's answer for one text.

    ``chunks`` is how many model inputs the text became (more than one only with windows);
    ``labels`` is, for a multi-label (sigmoid) model, every label at or above its threshold.
    """

    label: str
    scores: dict[str, float]
    truncated: bool
    chunks: int = 1
    labels: list[str] | None = None

    @property
    def score(self) -> float:
        return self.scores[self.label]


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """Model inputs for a batch of texts, padded to its own longest row.

    A text may span several rows (windows): ``spans[i]`` is the slice of rows of text ``i``.
    """

    feeds: dict[str, np.ndarray]
    spans: list[slice]
    truncated: list[bool]

    @property
    def shape(self) -> tuple[int, int]:
        rows, columns = self.feeds["input_ids"].shape
        return rows, columns


class Classifier:
    """A bundle's tokenizer and ONNX Runtime session, checked against each other at construction.

    ``threads`` is the cores inference may use, ``lanes`` how many ONNX Runtime calls run at once
    (each on ``threads // lanes`` intra-op threads; None: :meth:`Layout.default`, which may run wide
    batches alone on every thread, in a second session of the same model). ``spinning`` lets idle
    intra-op threads busy-wait for the next call: it only matters where a call has more than one
    thread; there it suits calls back to back on dedicated cores, and takes cores the event loop
    needs in the worker.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        *,
        threads: int = 1,
        lanes: int | None = 1,
        windowing: Windowing = DEFAULT_WINDOWING,
        thresholds: Mapping[str, float] | None = None,
        bucket_size: int = DEFAULT_BUCKET_SIZE,
        bucket_tokens: int = DEFAULT_BUCKET_TOKENS,
        provider: str = "cpu",
        spinning: bool = False,
    ) -> None:
        self.bundle = bundle
        self.labels = bundle.labels
        self.bucket_size = bucket_size
        self.bucket_tokens = bucket_tokens
        where = f"model bundle '{bundle.path}'"
        self._thresholds = _check_thresholds(bundle, thresholds or {})
        layout = Layout.of(bundle, threads, lanes)
        if not 1 <= layout.lanes <= threads:
            raise ConfigError(f"--lanes {lanes} must be between 1 and --threads ({threads})")
        self._session = _open_session(bundle, threads // layout.lanes, provider, spinning=spinning)
        self.provider = self._session.get_providers()[0]
        if self.provider != "CPUExecutionProvider":  # a GPU runs one call at a time: lanes would only queue
            layout = Layout(threads, 1)
        self.layout = layout
        self._wide_session = (
            self._session if layout.wide_rows is None else _open_session(bundle, threads, provider, spinning=spinning)
        )
        # Every call goes through the lanes, whichever thread asks: the worker classifies two batches
        # at once, and their calls together must not hold more than ``lanes`` lanes at a time.
        self._lanes = ThreadPoolExecutor(layout.lanes, thread_name_prefix="lane")
        self._gate = CoreGate(layout.lanes)
        inputs = {item.name: item for item in self._session.get_inputs()}
        unknown = sorted(set(inputs) - set(_KNOWN_INPUTS))
        missing = [name for name in _REQUIRED_INPUTS if name not in inputs]
        if unknown or missing:
            raise ModelError(
                f"{where}: model.onnx takes inputs {sorted(inputs)}; expected input_ids, attention_mask"
                " and optionally token_type_ids"
            )
        self._input_types = {name: _NUMPY_TYPES.get(item.type, np.int64) for name, item in inputs.items()}
        outputs = [item.name for item in self._session.get_outputs()]
        self._output = "logits" if "logits" in outputs else outputs[0]
        try:
            self._tokenizer = Tokenizer.from_file(str(bundle.tokenizer_file))
        except Exception as error:  # the Rust tokenizer raises a bare Exception
            raise ModelError(f"{where}: tokenizer.json cannot be loaded ({error})") from None
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        try:
            template = Template.probe(self._tokenizer)
        except BaseException as error:  # the Rust tokenizer raises bare Exceptions, or panics
            if not fails_alone(error):
                raise
            raise ModelError(f"{where}: tokenizer.json fails on a sample text ({_first_line(error)})") from None
        if template is None:
            raise ModelError(f"{where}: tokenizer.json does not wrap a text as [prefix] text [suffix]")
        self._template = template
        budget = bundle.max_length - template.overhead
        if budget < 1:
            raise ModelError(f"{where}: max_length {bundle.max_length} leaves no room for text")
        self._use(windowing)
        self._check_output_width(where)

    def with_windowing(self, windowing: Windowing) -> "Classifier":
        """The same model and session, cutting long texts another way (for comparing strategies)."""
        variant = copy.copy(self)
        variant._use(windowing)
        return variant

    def _use(self, windowing: Windowing) -> None:
        """Cut long texts as ``windowing`` says; no strategy named means the bundle's own (a model
        fine-tuned on head+tail rows says so)."""
        self.windowing = replace(windowing, strategy=windowing.strategy or self.bundle.truncation)
        budget = self.bundle.max_length - self._template.overhead
        if self.windowing.strategy.windowed and not 0 <= self.windowing.overlap(budget) < budget:
            raise ConfigError(
                f"--stride {self.windowing.stride} must be at least 0 and below the window of {budget} tokens"
            )

    def plan(self, texts: Sequence[str]) -> list[Plan]:
        """Tokenize ``texts`` and cut each into the rows the model will read (no padding yet).

        A long text is cut first to what the strategy reads (:mod:`~stream_clf.model.cuts`), so its
        cost follows ``max_length``, not its own length.
        """
        return [plan(ids, self._template, self.bundle.max_length, self.windowing) for ids in self.content(texts)]

    def content(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's content token ids, as far as the plan reads them (no special tokens)."""
        contents: list[list[int] | None] = [None] * len(texts)
        cuts = dict.fromkeys(range(len(texts)), Cut(*reach(self.bundle.max_length, self._template, self.windowing)))
        while cuts:
            pieces, layout = [], []
            for index, cut in cuts.items():
                text_pieces = cut.pieces(texts[index])
                layout.append((index, cut, None if text_pieces is None else len(text_pieces)))
                pieces += [texts[index]] if text_pieces is None else text_pieces
            if not self.bundle.case_sensitive:
                pieces = [piece.lower() for piece in pieces]
            encodings = iter(self._tokenizer.encode_batch(pieces, add_special_tokens=False))
            cuts = {}
            for index, cut, count in layout:
                tokens = [next(encodings).ids for _ in range(count or 1)]
                if count is None or cut.suffices(tokens):
                    contents[index] = [token for ids in tokens for token in ids]
                else:  # tokens longer than the cut allowed for: cut it again, twice as long
                    cuts[index] = cut.wider()
        return [ids or [] for ids in contents]

    def feeds(self, rows: Sequence[Row]) -> dict[str, np.ndarray]:
        """Model inputs for ``rows``, padded to the longest of them (never to max_length)."""
        width = max(len(ids) for ids, _ in rows)
        ids = np.full((len(rows), width), self.bundle.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for index, (row_ids, row_types) in enumerate(rows):
            ids[index, : len(row_ids)] = row_ids
            mask[index, : len(row_ids)] = 1
            types[index, : len(row_ids)] = row_types
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: arrays[name].astype(dtype, copy=False) for name, dtype in self._input_types.items()}

    def encode(self, texts: Sequence[str]) -> EncodedBatch:
        """All rows of ``texts`` as one padded batch, in order (for checks; inference buckets them)."""
        plans = self.plan(texts)
        return EncodedBatch(
            feeds=self.feeds([row for text_plan in plans for row in text_plan.rows]),
            spans=_spans(plans),
            truncated=[text_plan.truncated for text_plan in plans],
        )

    @property
    def tokenizer(self) -> Tokenizer:
        """The bundle's tokenizer, set to neither pad nor truncate."""
        return self._tokenizer

    @property
    def lanes(self) -> int:
        """How many ONNX Runtime calls may run at once."""
        return self.layout.lanes

    def wide(self, rows: Sequence[Row]) -> bool:
        """Whether a batch of ``rows`` runs its calls one at a time on every thread (see :class:`Layout`)."""
        return self.layout.wide(max((len(ids) for ids, _ in rows), default=0))

    def run(self, feeds: Mapping[str, np.ndarray], *, wide: bool = False) -> np.ndarray:
        """Run the model on padded inputs (from :meth:`feeds`): logits of shape [rows, labels].

        ``wide`` runs it in the session on every thread (where the layout has one). This runs
        outside the lanes: see :meth:`run_all`."""
        session = self._wide_session if wide else self._session
        return session.run([self._output], dict(feeds))[0]

    def run_all(
        self,
        calls: Sequence[Callable[[], Mapping[str, np.ndarray]]],
        observe: Callable[[float], None] | None = None,
        *,
        wide: bool = False,
    ) -> list[np.ndarray]:
        """Run the model on the feeds each of ``calls`` builds, in the lanes; logits in order.

        Calls across every thread that calls this hold at most ``lanes`` lanes at once (a ``wide``
        call, see :meth:`wide`, holds them all), the rest queued in the order they came (so a
        second batch's calls wait behind the first's). ``observe`` is told the lane-seconds of each
        call: the seconds it spent building its feeds, and those it ran times the lanes it held.
        """
        wide = wide and self.layout.wide_rows is not None
        held = self.lanes if wide else 1

        def call(build: Callable[[], Mapping[str, np.ndarray]]) -> np.ndarray:
            started = time.perf_counter()
            feeds = build()
            built = time.perf_counter()
            with self._gate.hold(held):
                running = time.perf_counter()
                logits = self.run(feeds, wide=wide)
            if observe is not None:
                observe(built - started + (time.perf_counter() - running) * held)
            return logits

        return list(self._lanes.map(call, calls))

    def logits(self, batch: EncodedBatch) -> np.ndarray:
        """Run the model on an encoded batch: logits of shape [rows, labels]."""
        return self.run(batch.feeds)

    def buckets(self, rows: Sequence[Row]) -> list[list[int]]:
        """Indices of ``rows`` in the length buckets inference runs them in."""
        return length_buckets([len(ids) for ids, _ in rows], self.bucket_size, self.bucket_tokens)

    def padded_tokens(self, plans: Sequence[Plan]) -> int:
        """Tokens :meth:`infer` computes for ``plans``, padding included."""
        rows = [row for text_plan in plans for row in text_plan.rows]
        return sum(len(bucket) * max(len(rows[i][0]) for i in bucket) for bucket in self.buckets(rows))

    def infer(self, plans: Sequence[Plan], observe: Callable[[float], None] | None = None) -> list[Prediction]:
        """Run the model on planned texts, by length bucket, in the lanes.

        Each bucket is padded only to rows of similar length; the answers go back to the texts' order.
        ``observe`` is told the lane-seconds each bucket took (see :meth:`run_all`).
        """
        if not plans:
            return []
        rows = [row for text_plan in plans for row in text_plan.rows]
        logits = np.empty((len(rows), len(self.labels)), dtype=np.float64)
        buckets = self.buckets(rows)
        calls = [functools.partial(self.feeds, [rows[i] for i in bucket]) for bucket in buckets]
        for bucket, bucket_logits in zip(buckets, self.run_all(calls, observe, wide=self.wide(rows)), strict=True):
            logits[bucket] = bucket_logits
        probabilities = self._activate(logits)
        return [
            self._prediction(self._pool(probabilities[span]), text_plan.truncated, len(text_plan.rows))
            for span, text_plan in zip(_spans(plans), plans, strict=True)
        ]

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Classify ``texts``, in order."""
        return self.infer(self.plan(texts))

    def _pool(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 1:
            return rows[0]
        if self.windowing.strategy is Truncation.WINDOWS_MAX:
            pooled = rows.max(axis=0)
            return pooled / pooled.sum() if self.bundle.activation == "softmax" else pooled
        return rows.mean(axis=0)

    def _prediction(self, probabilities: np.ndarray, truncated: bool, chunks: int) -> Prediction:
        scores = {label: round(float(p), _SCORE_DIGITS) for label, p in zip(self.labels, probabilities, strict=True)}
        labels = None
        if self.bundle.activation == "sigmoid":
            labels = [label for label in self.labels if scores[label] >= self._thresholds.get(label, DEFAULT_THRESHOLD)]
        return Prediction(
            label=self.labels[int(np.argmax(probabilities))],
            scores=scores,
            truncated=truncated,
            chunks=chunks,
            labels=labels,
        )

    def _activate(self, logits: np.ndarray) -> np.ndarray:
        if self.bundle.activation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def _check_output_width(self, where: str) -> None:
        try:
            logits = self.logits(self.encode(["ok"]))
        except BaseException as error:  # ONNX Runtime raises its own exception types; tokenizers may panic
            if not fails_alone(error):
                raise
            raise ModelError(f"{where}: model.onnx fails on a sample input ({_first_line(error)})") from None
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise ModelError(
                f"{where}: model.onnx returns {self._output} of shape {list(logits.shape)} but config.json"
                f" names {len(self.labels)} labels"
            )


def _spans(plans: Sequence[Plan]) -> list[slice]:
    """Which rows of the flattened plans belong to each text."""
    spans, start = [], 0
    for text_plan in plans:
        spans.append(slice(start, start + len(text_plan.rows)))
        start += len(text_plan.rows)
    return spans


def _check_thresholds(bundle: ModelBundle, thresholds: Mapping[str, float]) -> dict[str, float]:
    if not thresholds:
        return {}
    if bundle.activation != "sigmoid":
        raise ConfigError(
            f"--thresholds applies to multi-label (sigmoid) models; '{bundle.name}' is single-label (softmax)"
        )
    unknown = sorted(set(thresholds) - set(bundle.labels))
    if unknown:
        raise ConfigError(
            f"--thresholds names {unknown}, which are not labels of '{bundle.name}': {list(bundle.labels)}"
        )
    return dict(thresholds)


def _providers(provider: str) -> list[str]:
    """ONNX Runtime execution providers for ``--provider`` (cpu, cuda or auto)."""
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if provider == "cuda" and not has_cuda:
        raise ConfigError("--provider cuda: this onnxruntime has no CUDA support; pip install onnxruntime-gpu")
    if provider == "cuda" or (provider == "auto" and has_cuda):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _open_session(bundle: ModelBundle, threads: int, provider: str, *, spinning: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # A memory pattern is planned and kept per input shape; with a new shape in nearly every call
    # (rows x length), they only pile up. The arena still reuses its blocks.
    options.enable_mem_pattern = False
    # ONNX Runtime's own logger writes coloured multi-line errors to stderr; ours reports them.
    options.log_severity_level = 4
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    try:
        return ort.InferenceSession(str(bundle.model_file), options, providers=_providers(provider))
    except Exception as error:  # ONNX Runtime raises its own exception types
        raise ModelError(f"model bundle '{bundle.path}': model.onnx cannot be loaded ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
