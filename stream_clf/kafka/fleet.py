"""The group as a whole, for the dashboard: each member's partitions, rate, lag and models.

Every worker of a group can show the whole fleet, not only itself: a thread follows the status topic
(each worker's :class:`~stream_clf.kafka.control_records.WorkerStatus` says which models it serves)
and, every :data:`INTERVAL_SECONDS`, asks the brokers for the group's members and their assignments
and the group's committed offsets (:class:`~stream_clf.kafka.groups.GroupReader`, in an event loop of
the thread's own), and the partitions' ends. A member's rate is how fast the committed offsets of its
partitions moved since the last look; its lag is how far they are behind the ends. Everything is read
from Kafka, as any member (or an operator) would see it: a member that stopped answering shows until
the group drops it.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from stream_clf.kafka.connection import Connection
from stream_clf.kafka.control import CLIENT_ID_PREFIX, Skipped, log_skipped
from stream_clf.kafka.control_records import ControlState, MalformedRecordError
from stream_clf.kafka.groups import GroupReader

__all__ = ["INTERVAL_SECONDS", "FleetMember", "FleetWatch"]

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 5.0


@dataclass(frozen=True)
class FleetMember:
    """One member of the group as the brokers and the status topic tell it."""

    worker: str  # its name (INSTANCE-XXXXXXXX), or its client id if it is not a stream-clf worker
    host: str
    partitions: list[list[Any]]  # [topic, partition] pairs of the inputs, sorted
    rate: float | None  # events/s committed on its partitions since the last look (None: first look)
    lag: int  # events behind the ends of its partitions, from the committed offsets
    models: dict[str, str] = field(default_factory=dict)  # target -> version it serves (from its status)


class FleetWatch:
    """Follows ``group``'s members and the status topic from a thread; :meth:`snapshot` is the last look,
    told from where ``me`` (this worker's name) stands. ``skipped`` hears of each malformed status."""

    def __init__(
        self,
        connection: Connection,
        group: str,
        inputs: Sequence[str],
        status_topic: str,
        *,
        me: str,
        interval: float = INTERVAL_SECONDS,
        skipped: Skipped = log_skipped,
    ) -> None:
        self._connection = connection
        self._skipped = skipped
        self._me = me
        self._group = group
        self._inputs = set(inputs)
        self._status_topic = status_topic
        self._interval = interval
        self._statuses = ControlState()
        self._committed: dict[tuple[str, int], int] = {}
        self._looked = 0.0
        self._snapshot: dict[str, Any] = {"group": group, "me": me, "members": [], "at": None, "error": None}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-watch", daemon=True)

    def start(self) -> "FleetWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop looking (a look under way is left to end by itself: the thread is a daemon)."""
        self._stopping.set()
        self._thread.join(timeout=1)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._snapshot

    def _run(self) -> None:
        statuses = self._connection.reader("fleet")
        statuses.assign([TopicPartition(self._status_topic, 0, OFFSET_BEGINNING)])
        loop = asyncio.new_event_loop()
        group = GroupReader(self._connection, self._group)
        try:
            while not self._stopping.is_set():
                self._follow(statuses, until=time.monotonic() + self._interval)
                try:
                    look = loop.run_until_complete(asyncio.wait_for(self._look(group, statuses), 3 * self._interval))
                except Exception as error:  # the brokers do not answer now: said, and looked at again
                    look = {**self.snapshot(), "error": f"{type(error).__name__}: {error}"[:300]}
                with self._lock:
                    self._snapshot = look
        except Exception:  # the dashboard loses its view of the group; the worker goes on
            log.exception("event=fleet_watch_failed")
        finally:
            statuses.close()
            loop.run_until_complete(group.close())
            loop.close()

    def _follow(self, consumer: Any, until: float) -> None:
        """Read status records until ``until``: the latest status of each worker."""
        while not self._stopping.is_set() and (left := until - time.monotonic()) > 0:
            message = consumer.poll(min(left, 0.5))
            if message is None or message.error() is not None:
                continue
            try:
                self._statuses.read(message.key(), message.value())
            except MalformedRecordError as error:
                self._skipped(self._status_topic, message.offset() or 0, error)

    async def _look(self, group: GroupReader, consumer: Any) -> dict[str, Any]:
        members = await group.members()
        partitions = sorted({key for member in members for key in member.partitions if key[0] in self._inputs})
        committed = {key: max(0, offset) for key, offset in (await group.committed(partitions)).items()}
        ends = {
            (topic, partition): consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)[1]
            for topic, partition in partitions
        }
        now = time.monotonic()
        elapsed = now - self._looked if self._looked else None
        statuses = self._statuses.group_statuses(self._group)
        fleet = []
        for member in members:
            mine = [key for key in member.partitions if key[0] in self._inputs]
            worker = member.client_id.removeprefix(CLIENT_ID_PREFIX)
            moved = sum(committed.get(key, 0) - self._committed.get(key, committed.get(key, 0)) for key in mine)
            status = statuses.get(worker)
            fleet.append(
                FleetMember(
                    worker=worker,
                    host=member.host,
                    partitions=[list(key) for key in mine],
                    rate=moved / elapsed if elapsed else None,
                    lag=sum(max(0, ends.get(key, 0) - committed.get(key, 0)) for key in mine),
                    models={target: served["version"] for target, served in status.serving.items()} if status else {},
                )
            )
        self._committed, self._looked = committed, now
        return {
            "group": self._group,
            "me": self._me,
            "members": [asdict(member) for member in sorted(fleet, key=lambda m: m.worker)],
            "at": time.time(),
            "error": None,
        }
