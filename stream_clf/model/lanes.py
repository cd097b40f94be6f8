"""How a classifier's ONNX Runtime calls share the cores: lanes, and batches wide enough to take them all.

A *lane* is one call at a time on ``threads // lanes`` cores. On 2 cores, two single-threaded
lanes ran short texts 20-30% faster than one call on both threads (whose intra-op threads
synchronize at every operator, and stall whenever another thread takes one of their cores). A
fused graph reading long rows is the other way round: there one call on every core was up to 25%
faster, and halves a lone text's wait. So by default a fused model that may read rows longer than
``WIDE_ROWS`` decides per batch: a batch with a row that long is *wide*, and runs its calls one at
a time on every core; any other batch runs in a lane per core. Per batch, not per call: a wide
call waiting for a lane's short call to end leaves the other core idle, and a batch of reviews
mixes both lengths. A fixed ``--lanes`` runs every batch the same way.
"""

import contextlib
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from stream_clf.model.bundle import ModelBundle

__all__ = ["WIDE_ROWS", "CoreGate", "Layout"]

# A fused graph's calls on rows longer than this ran faster on every core than in lanes.
WIDE_ROWS = 256


@dataclass(frozen=True, slots=True)
class Layout:
    """``lanes`` calls at once, each on ``threads // lanes`` cores; with ``wide_rows`` set, a batch
    with a row longer than that runs its calls alone on all ``threads`` instead (each holds every lane)."""

    threads: int
    lanes: int
    wide_rows: int | None = None

    @classmethod
    def default(cls, bundle: ModelBundle, threads: int) -> "Layout":
        """A lane per thread; a fused model that may read rows longer than ``WIDE_ROWS`` tokens runs
        a batch with such rows one call at a time on every thread.

        Measured on 2 cores, the fused BERT-, DistilBERT-, RoBERTa- and ALBERT-base shapes at 512
        tokens, engine alone: on IMDB reviews one call on both threads ran 0-9% faster than two
        lanes (Zen 4) and 6-25% (Zen 3); on AG News texts of 53-62 tokens two lanes ran about 5%
        faster, and end to end through the broker BERT-base's batches of them ran 9-27% faster in
        lanes. At 256 tokens the two were within noise; unfused graphs favoured lanes at every length.
        """
        wide = bundle.fused and bundle.max_length > WIDE_ROWS and threads > 1
        return cls(threads, threads, WIDE_ROWS if wide else None)

    @classmethod
    def of(cls, bundle: ModelBundle, threads: int, lanes: int | None) -> "Layout":
        """``lanes`` fixed calls at once, or None: the :meth:`default`."""
        return cls.default(bundle, threads) if lanes is None else cls(threads, lanes)

    def wide(self, widest: int) -> bool:
        """Whether a batch whose longest row is ``widest`` tokens runs alone on every thread."""
        return self.wide_rows is not None and widest > self.wide_rows

    def __str__(self) -> str:
        lanes = f"{self.lanes} lane{'s' if self.lanes > 1 else ''}"
        return lanes if self.wide_rows is None else f"{lanes}, batches past {self.wide_rows} tokens on all threads"


class CoreGate:
    """``lanes`` lanes handed to calls in the order the calls asked.

    A call waits until every call that asked before it has its lanes and its own are free, so a
    call that needs them all is never overtaken forever by calls that need one.
    """

    def __init__(self, lanes: int) -> None:
        self._free = lanes
        self._waiting: deque[object] = deque()
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, lanes: int) -> Iterator[None]:
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            self._changed.wait_for(lambda: self._waiting[0] is ticket and self._free >= lanes)
            self._waiting.popleft()
            self._free -= lanes
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._free += lanes
                self._changed.notify_all()
