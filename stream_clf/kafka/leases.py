"""One live process per instance name: the lease an exactly-once worker holds on its identity.

An exactly-once worker's transactional id is ``GROUP-INSTANCE``. A replacement that starts under
the same instance (a StatefulSet's pod, restarted) must fence its dead predecessor at once: it
does, by initialising transactions with that id. But two *live* processes given the same instance
(a copied ``--instance``, a compose scale) would fence each other in turn, each restart of one
aborting the other. So before it touches transactions a worker takes the instance's lease, a
record ``lease/GROUP/INSTANCE`` on the status topic, and renews it every
:data:`HEARTBEAT_SECONDS` while it runs; a clean stop deletes it.

Taking it:

1. Read the status topic to its end. No lease, or a deleted one: the instance is free.
2. A lease there may be a live holder's or a dead one's (killed, its last renewal not yet old).
   Watch the topic for :data:`EXPIRY_SECONDS`: a renewal by the holder means it lives, and the
   newcomer refuses to start, naming it; none means it is dead, and the newcomer goes on (its
   transactions will fence the dead one's).
3. Write a claim, then read the topic from where step 1 ended up to that claim: of the claims
   written since, the first wins (the log orders them), so two processes starting at once under
   one name cannot both go on.

Nothing compares clocks of two machines: liveness is a renewal seen arriving, on the newcomer's
own clock.
"""

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream_clf.errors import BrokerError, ConfigError
from stream_clf.kafka.connection import Connection
from stream_clf.kafka.control import control_producer, log_skipped, read_control
from stream_clf.kafka.control_records import InstanceLease, MalformedRecordError

__all__ = ["EXPIRY_SECONDS", "HEARTBEAT_SECONDS", "InstanceHold", "take_instance"]

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
# A lease not renewed for this long is a dead holder's: five missed renewals, so that a holder slowed
# by a busy broker is not taken for dead.
EXPIRY_SECONDS = 5.0


class InstanceHold:
    """The lease this process holds, renewed from a thread until :meth:`release`."""

    def __init__(self, connection: Connection, topic: str, lease: InstanceLease) -> None:
        self._producer = control_producer(connection)
        self._topic = topic
        self.lease = lease
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="instance-lease", daemon=True)

    def start(self) -> "InstanceHold":
        self._thread.start()
        return self

    def release(self, *, clean: bool = True) -> None:
        """Stop renewing; after a ``clean`` stop, delete the lease too, so a successor need not wait for
        it to expire. After a failure it is left to expire: the failure may be this process's fencing by
        a successor that took the instance, whose lease a deletion would remove."""
        self._stopping.set()
        self._thread.join()
        if not clean:
            return
        self._producer.produce(self._topic, key=self.lease.key, value=None)
        if self._producer.flush(10):
            log.warning("event=lease_not_released instance=%s", self.lease.instance)

    def _renew(self) -> None:
        while not self._stopping.wait(HEARTBEAT_SECONDS):
            self.lease = self.lease.renewed()
            self._producer.produce(self._topic, key=self.lease.key, value=self.lease.encode(), on_delivery=_renewed)
            self._producer.poll(0)


def _renewed(error: KafkaError | None, _message: Any) -> None:
    if error is not None:
        log.warning("event=lease_not_renewed error=%r", error.str())


def take_instance(
    connection: Connection,
    topic: str,
    *,
    group: str,
    instance: str,
    worker: str,
    expiry: float = EXPIRY_SECONDS,
    waiting: Callable[[InstanceLease], None] = lambda lease: None,
) -> InstanceHold:
    """Take ``instance`` of ``group`` for this process (``worker``), or raise :class:`ConfigError` naming
    the live process that holds it; ``waiting`` is told of a lease whose holder is being watched."""
    try:
        state = read_control(connection, topic)
        held = state.leases.get((group, instance))
        if held is not None:
            waiting(held)
            renewal = _watch(connection, topic, state.offset, held, expiry)
            if renewal is not None:
                raise _taken(renewal)
        claim = InstanceLease(group, instance, worker, socket.gethostname(), os.getpid())
        producer = control_producer(connection)
        producer.produce(topic, key=claim.key, value=claim.encode())
        if producer.flush(30):
            raise BrokerError(f"status topic {topic!r}: the instance lease was not acknowledged within 30s")
        first = _first_claim(connection, topic, state.offset, claim)
    except KafkaException as error:
        raise BrokerError(f"status topic {topic!r}: the instance lease was not taken: {error.args[0].str()}") from None
    if first.worker != worker:
        raise _taken(first)
    log.info("event=instance_taken group=%s instance=%s worker=%s", group, instance, worker)
    return InstanceHold(connection, topic, claim).start()


def _taken(holder: InstanceLease) -> ConfigError:
    return ConfigError(
        f"--instance {holder.instance}: a live worker of group {holder.group!r} holds this instance"
        f" ({holder.worker} on host {holder.host}, pid {holder.pid}); two processes under one instance would"
        " fence each other's transactions: give each replica its own --instance (a StatefulSet's pod name)"
    )


def _watch(connection: Connection, topic: str, offset: int, held: InstanceLease, expiry: float) -> InstanceLease | None:
    """The holder's next renewal of ``held`` within ``expiry`` seconds, or None (deleted, or not renewed)."""
    deadline = time.monotonic() + expiry
    for lease in _leases_from(connection, topic, offset, held.key, until=lambda: time.monotonic() > deadline):
        if lease is None:
            return None  # deleted: its holder stopped cleanly
        if lease.worker == held.worker:
            return lease
    return None


def _first_claim(connection: Connection, topic: str, offset: int, claim: InstanceLease) -> InstanceLease:
    """The first lease of ``claim``'s instance written from ``offset`` on (``claim`` itself at the latest)."""
    deadline = time.monotonic() + 30
    first: InstanceLease | None = None
    for lease in _leases_from(connection, topic, offset, claim.key, until=lambda: time.monotonic() > deadline):
        if lease is None:
            first = None  # deleted: claims after it start afresh
            continue
        if first is None:
            first = lease
        if lease.worker == claim.worker:
            return first
    raise BrokerError(f"status topic {topic!r}: the instance lease written was not read back within 30s")


def _leases_from(
    connection: Connection, topic: str, offset: int, key: bytes, *, until: Callable[[], bool]
) -> Iterator[InstanceLease | None]:
    """The leases under ``key`` (None for a deletion) from ``offset`` on, as they are written, until ``until()``."""
    consumer = connection.reader("lease", {"enable.partition.eof": False})
    consumer.assign([TopicPartition(topic, 0, offset)])
    try:
        while not until():
            message = consumer.poll(0.2)
            if message is None or message.error() is not None or message.key() != key:
                continue
            if message.value() is None:
                yield None
                continue
            try:
                yield InstanceLease.decode(message.key(), message.value())
            except MalformedRecordError as error:
                log_skipped(topic, message.offset() or 0, error)
    finally:
        consumer.close()
