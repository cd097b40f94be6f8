"""``stream-clf bench``: stream-clf against the engine's ceiling, the naive baseline and the machine.

One run measures, side by side on the same model and the same texts (ratios from one run: the
machines are noisy):

- the raw engine: the bundle's ONNX session on pre-tokenized, globally length-sorted buckets, in
  the worker's lanes and as one call on all threads (the faster is the ceiling);
- stream-clf end to end: events in to results out through a real broker, the cores and memory of
  each process, the share of the run each of the worker's stages was busy, starved or blocked
  (its own clocks, read from /metrics), and produce-to-result latency under a load of 70% of that
  throughput (and the same for the exactly-once loop, on request);
- the naive baseline: a Faust agent calling transformers' ``pipeline`` in PyTorch, one event at a
  time, on the same encoder;
- the fraction of the machine's peak: counted FLOPs per text over a measured matrix-product peak;
- on request, a peer: Spark NLP's Structured Streaming on the same broker, bundle and texts (see
  :mod:`stream_clf.tools.bench.peer`), its labels compared with stream-clf's, its latency measured at a
  pace it sustains and stream-clf's again at that same pace.
"""

from stream_clf.tools.bench.report import render
from stream_clf.tools.bench.run import BenchOptions, run_bench

__all__ = ["BenchOptions", "render", "run_bench"]
