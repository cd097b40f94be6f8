"""The ceiling: the bundle's ONNX session on pre-tokenized, length-sorted batches, and the machine's.

``measure_engine`` times only ``session.run`` on rows sorted by length across the whole set and
cut into buckets, which is the least padding any batching can reach. ``measure_peak`` times a
2048-cubed matrix product in ONNX Runtime (fp32, or int8 through dynamic quantization) with the
same threads: the practical peak the model's FLOPs are compared with. ``encoder_flops`` counts the
multiply-adds of a BERT-shaped encoder for a sequence of n tokens.
"""

import functools
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from stream_clf.model.classifier import Classifier
from stream_clf.model.windows import Plan

__all__ = ["EngineResult", "encoder_flops", "measure_engine", "measure_full_batch", "measure_peak"]

Advance = Callable[[int], None]
_PEAK_SIZE = 2048


@dataclass(frozen=True)
class EngineResult:
    texts: int
    rows: int
    tokens: int
    padded_tokens: int
    seconds: float
    flops: float | None
    cores: float  # CPU seconds of this process per second of the pass: what the engine had

    @property
    def texts_per_second(self) -> float:
        return self.texts / self.seconds

    @property
    def achieved_gflops(self) -> float | None:
        return None if self.flops is None else self.flops / self.seconds / 1e9


def encoder_flops(config: dict[str, Any], tokens: int) -> float | None:
    """Floating-point operations (2 per multiply-add) of one pass over ``tokens`` tokens.

    Per layer: Q, K, V and output projections (4 n H^2 multiply-adds), the feed-forward block
    (2 n H I), attention scores and their weighted sum (2 n^2 H). None for configs without BERT's
    (or DistilBERT's) size fields.
    """
    hidden = config.get("hidden_size", config.get("dim"))
    layers = config.get("num_hidden_layers", config.get("n_layers"))
    inner = config.get("intermediate_size", config.get("hidden_dim"))
    if not all(isinstance(value, int) for value in (hidden, layers, inner)):
        return None
    per_layer = 2 * (4 * tokens * hidden * hidden + 2 * tokens * hidden * inner + 2 * tokens * tokens * hidden)
    return float(layers * per_layer)


def measure_engine(
    classifier: Classifier, plans: Sequence[Plan], config: dict[str, Any], advance: Advance
) -> EngineResult:
    """Throughput of the ONNX session alone on all rows, globally sorted, in the classifier's buckets
    and lanes (wall time of the whole pass; feeds are built beforehand).

    Sorted so, the rows make at most two batches for the worker's layout: the calls on rows past its
    ``wide_rows`` run as one wide batch, the others in the lanes."""
    rows = [row for text_plan in plans for row in text_plan.rows]
    buckets = [classifier.feeds([rows[i] for i in bucket]) for bucket in classifier.buckets(rows)]
    batches: dict[bool, list[dict[str, np.ndarray]]] = {False: [], True: []}  # wide or not: the calls
    for feeds in buckets:
        batches[classifier.layout.wide(feeds["input_ids"].shape[1])].append(feeds)
    for wide, batch in batches.items():  # warm up on the longest calls of each
        classifier.run_all([functools.partial(dict, feeds) for feeds in batch[-2 * classifier.lanes :]], wide=wide)

    def counted(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        advance(len(feeds["input_ids"]))
        return feeds

    started, cpu = time.perf_counter(), time.process_time()
    for wide, batch in batches.items():
        classifier.run_all([functools.partial(counted, feeds) for feeds in batch], wide=wide)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    flops = [encoder_flops(config, len(ids)) for ids, _ in rows]
    return EngineResult(
        texts=len(plans),
        rows=len(rows),
        tokens=sum(len(ids) for ids, _ in rows),
        padded_tokens=sum(int(np.prod(feeds["input_ids"].shape)) for feeds in buckets),
        seconds=elapsed,
        flops=None if any(f is None for f in flops) else float(sum(f for f in flops if f is not None)),
        cores=cpu / elapsed,
    )


def measure_full_batch(classifier: Classifier, plans: Sequence[Plan], max_batch: int, max_tokens: int) -> float:
    """Median seconds the worker's inference step takes on a full micro-batch of this mix."""
    batches, batch, total = [], [], 0
    for text_plan in plans:
        if batch and (len(batch) == max_batch or total + text_plan.tokens > max_tokens):
            batches.append(batch)
            batch, total = [], 0
        batch.append(text_plan)
        total += text_plan.tokens
    timings = []
    for full in batches[:12]:
        started = time.perf_counter()
        classifier.infer(full)
        timings.append(time.perf_counter() - started)
    return float(np.median(timings))


def measure_peak(precision: str, threads: int) -> float:
    """GFLOP/s (int8: GOP/s) of a 2048^3 matrix product in ONNX Runtime with ``threads`` threads."""
    n = _PEAK_SIZE
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "peak",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory(prefix="stream-clf-peak-") as scratch:
        path = Path(scratch) / "matmul.onnx"
        onnx.save(model, str(path))
        if precision == "int8":
            quantized = Path(scratch) / "matmul-int8.onnx"
            root = logging.getLogger()
            level, root.level = root.level, logging.ERROR
            try:
                quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8, per_channel=True)
            finally:
                root.setLevel(level)
            path = quantized
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {"a": rng.standard_normal((n, n)).astype(np.float32)}
        session.run(None, feeds)
        runs = []
        for _ in range(8):
            started = time.perf_counter()
            session.run(None, feeds)
            runs.append(time.perf_counter() - started)
    return 2 * n**3 / float(np.median(runs)) / 1e9
