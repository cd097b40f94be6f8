"""The records of the control plane, decoded and checked field by field: swap requests and worker statuses.

Two compacted topics, so that each principal needs only what it does (Kafka ACLs cannot tell key
prefixes apart):

- the **control topic** holds swap requests, written by operators (``stream-clf swap``) and read
  by workers. Key ``swap/GROUP`` (the default model) or ``swap/GROUP/TOPIC`` (a topic's route):
  a :class:`SwapRequest`.
- the **status topic** holds what each worker serves, written by workers and read by operators.
  Key ``status/GROUP/WORKER``: a :class:`WorkerStatus`, written at start and after each swap it
  applied or refused; a worker that stops cleanly deletes its own (a tombstone). Key
  ``lease/GROUP/INSTANCE``: an :class:`InstanceLease`, the hold of an exactly-once worker on its
  instance name (its transactional id), renewed every second while it runs and deleted when it
  stops cleanly (see :mod:`~stream_clf.kafka.leases`).

Anyone who can write to a topic can write anything to it, and the topics are compacted, so a bad
record stays until someone deletes it. Every record is checked before it is used, key and value,
field by field and type by type; one that fails raises :class:`MalformedRecordError` (the reader skips
it with one log line) and never reaches the code that acts on it.
"""

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

from stream_clf.errors import StreamClfError

__all__ = [
    "ControlState",
    "InstanceLease",
    "MalformedRecordError",
    "SwapRequest",
    "WorkerStatus",
    "lease_key",
    "status_key",
    "swap_key",
]

DEFAULT_TARGET = "*"
OUTCOMES = ("applied", "refused", "skipped")
# Longer strings than this are no model path, version or reason stream-clf writes.
_MOST_CHARS = 4096


class MalformedRecordError(StreamClfError):
    """A control-plane record that is not one stream-clf wrote: skipped, with this reason."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        super().__init__(reason)


@dataclass(frozen=True)
class SwapRequest:
    """Serve ``target`` (``*``: the default model; else a topic's route) with ``model`` from now on.

    ``model`` is a bundle path or a built model's name, as the workers see it; ``expect`` the content
    hash (``model_version``) the operator expects it to have: a worker refuses a bundle that differs.
    ``previous`` and ``previous_version`` are what the group served when the swap was asked for (a
    rollback swaps back to them); ``configured`` the version of the model the workers were started
    with for that target, so a worker started later with another ``--model`` (a new deployment) is
    not overridden by an old swap.
    """

    group: str
    target: str
    model: str
    expect: str
    request: str = field(default_factory=lambda: uuid.uuid4().hex)
    previous: str | None = None
    previous_version: str | None = None
    configured: str | None = None
    at: float = field(default_factory=time.time)

    @property
    def key(self) -> bytes:
        return swap_key(self.group, self.target)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, key: bytes | None, value: bytes) -> "SwapRequest":
        """The request a record holds, or :class:`MalformedRecordError` saying why it holds none."""
        group, target = _key_parts(key, "swap")
        fields = _Fields("swap", value)
        request = cls(
            group=fields.text("group"),
            target=fields.text("target"),
            model=fields.text("model"),
            expect=fields.text("expect"),
            request=fields.text("request"),
            previous=fields.text("previous", optional=True),
            previous_version=fields.text("previous_version", optional=True),
            configured=fields.text("configured", optional=True),
            at=fields.number("at"),
        )
        if (request.group, request.target) != (group, target or DEFAULT_TARGET):
            raise MalformedRecordError("swap", f"key {key!r} names another group or target than the request")
        return request


@dataclass(frozen=True)
class WorkerStatus:
    """What one worker serves, and how the last swap it was asked for ended.

    ``serving`` and ``configured`` map each target (``*`` or a topic) to ``{"model", "version"}``:
    what serves it now, and what the worker was started with. ``follows`` is False for a worker
    started with ``--swaps off``, which applies no swap.
    """

    group: str
    worker: str
    serving: Mapping[str, Mapping[str, str]]
    configured: Mapping[str, Mapping[str, str]]
    request: str | None = None
    outcome: str | None = None  # applied, refused, or skipped (at start: the worker's --model changed)
    reason: str | None = None
    seconds: float | None = None  # from the swap's arrival to its model serving
    follows: bool = True
    at: float = field(default_factory=time.time)

    @property
    def key(self) -> bytes:
        return status_key(self.group, self.worker)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, key: bytes | None, value: bytes) -> "WorkerStatus":
        """The status a record holds, or :class:`MalformedRecordError` saying why it holds none."""
        group, worker = _key_parts(key, "status")
        fields = _Fields("status", value)
        status = cls(
            group=fields.text("group"),
            worker=fields.text("worker"),
            serving=fields.targets("serving"),
            configured=fields.targets("configured"),
            request=fields.text("request", optional=True),
            outcome=fields.choice("outcome", OUTCOMES),
            reason=fields.text("reason", optional=True),
            seconds=fields.number("seconds", optional=True),
            follows=fields.flag("follows"),
            at=fields.number("at"),
        )
        if (status.group, status.worker) != (group, worker):
            raise MalformedRecordError("status", f"key {key!r} names another group or worker than the status")
        return status


@dataclass(frozen=True)
class InstanceLease:
    """Worker ``worker`` (a process: ``INSTANCE-XXXXXXXX``) holds ``instance`` in ``group``: ``beat`` counts
    its renewals, ``host`` and ``pid`` say where it runs (for the one line that names it to another
    process refused the same instance)."""

    group: str
    instance: str
    worker: str
    host: str
    pid: int
    beat: int = 0
    at: float = field(default_factory=time.time)

    @property
    def key(self) -> bytes:
        return lease_key(self.group, self.instance)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    def renewed(self) -> "InstanceLease":
        return replace(self, beat=self.beat + 1, at=time.time())

    @classmethod
    def decode(cls, key: bytes | None, value: bytes) -> "InstanceLease":
        """The lease a record holds, or :class:`MalformedRecordError` saying why it holds none."""
        group, instance = _key_parts(key, "lease")
        fields = _Fields("lease", value)
        lease = cls(
            group=fields.text("group"),
            instance=fields.text("instance"),
            worker=fields.text("worker"),
            host=fields.text("host"),
            pid=int(fields.number("pid")),
            beat=int(fields.number("beat")),
            at=fields.number("at"),
        )
        if (lease.group, lease.instance) != (group, instance):
            raise MalformedRecordError("lease", f"key {key!r} names another group or instance than the lease")
        return lease


def lease_key(group: str, instance: str) -> bytes:
    return f"lease/{group}/{instance}".encode()


def swap_key(group: str, target: str) -> bytes:
    return f"swap/{group}".encode() if target == DEFAULT_TARGET else f"swap/{group}/{target}".encode()


def status_key(group: str, worker: str) -> bytes:
    return f"status/{group}/{worker}".encode()


def _key_parts(key: bytes | None, kind: str) -> tuple[str, str]:
    """``GROUP`` and the rest of a ``KIND/GROUP[/REST]`` key."""
    try:
        name = (key or b"").decode()
    except UnicodeDecodeError:
        raise MalformedRecordError(kind, "the key is not UTF-8") from None
    prefix, _, rest = name.partition("/")
    group, _, tail = rest.partition("/")
    if prefix != kind or not group:
        raise MalformedRecordError(kind, f"key {name[:200]!r} is not {kind}/GROUP/...")
    return group, tail


class _Fields:
    """A record's JSON object, read one typed field at a time."""

    def __init__(self, kind: str, value: bytes) -> None:
        self._kind = kind
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError as error:
            raise MalformedRecordError(kind, f"the value is not JSON ({error})") from None
        if not isinstance(document, dict):
            raise MalformedRecordError(kind, "the value is not a JSON object")
        self._document: dict[str, Any] = document

    def _bad(self, name: str, expected: str) -> MalformedRecordError:
        shown = orjson.dumps(self._document.get(name)).decode()[:80]
        return MalformedRecordError(self._kind, f"{name!r} is {shown}; expected {expected}")

    def text(self, name: str, *, optional: bool = False) -> Any:
        value = self._document.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value or len(value) > _MOST_CHARS:
            raise self._bad(name, f"a string of 1-{_MOST_CHARS} characters" + (" or null" if optional else ""))
        return value

    def number(self, name: str, *, optional: bool = False) -> Any:
        value = self._document.get(name)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self._bad(name, "a number" + (" or null" if optional else ""))
        return float(value)

    def flag(self, name: str) -> bool:
        value = self._document.get(name, True)
        if not isinstance(value, bool):
            raise self._bad(name, "true or false")
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> Any:
        value = self._document.get(name)
        if value is not None and value not in choices:
            raise self._bad(name, f"one of {', '.join(choices)} or null")
        return value

    def targets(self, name: str) -> dict[str, dict[str, str]]:
        value = self._document.get(name)
        expected = 'an object of targets, each {"model": string, "version": string}'
        if not isinstance(value, dict):
            raise self._bad(name, expected)
        targets = {}
        for target, served in value.items():
            if not (isinstance(served, dict) and set(served) == {"model", "version"}):
                raise self._bad(name, expected)
            if not all(isinstance(part, str) and 0 < len(part) <= _MOST_CHARS for part in served.values()):
                raise self._bad(name, expected)
            targets[target] = {"model": served["model"], "version": served["version"]}
        return targets


@dataclass
class ControlState:
    """The latest record of each key read from the control or status topic, and the offset read up to."""

    swaps: dict[tuple[str, str], SwapRequest] = field(default_factory=dict)
    statuses: dict[tuple[str, str], WorkerStatus] = field(default_factory=dict)
    leases: dict[tuple[str, str], InstanceLease] = field(default_factory=dict)
    offset: int = 0

    def read(self, key: bytes | None, value: bytes | None) -> SwapRequest | WorkerStatus | InstanceLease | None:
        """Take one record in; return what it holds (None for a tombstone). Raises
        :class:`MalformedRecordError` for a record that holds no request, status or lease."""
        kind = (key or b"").split(b"/", 1)[0]
        if kind == b"swap":
            if value is None:
                group, target = _key_parts(key, "swap")
                self.swaps.pop((group, target or DEFAULT_TARGET), None)
                return None
            request = SwapRequest.decode(key, value)
            self.swaps[request.group, request.target] = request
            return request
        if kind == b"status":
            if value is None:
                self.statuses.pop(_key_parts(key, "status"), None)
                return None
            status = WorkerStatus.decode(key, value)
            self.statuses[status.group, status.worker] = status
            return status
        if kind == b"lease":
            if value is None:
                self.leases.pop(_key_parts(key, "lease"), None)
                return None
            lease = InstanceLease.decode(key, value)
            self.leases[lease.group, lease.instance] = lease
            return lease
        raise MalformedRecordError("other", f"key {(key or b'')[:200]!r} is not swap/..., status/... or lease/...")

    def group_statuses(self, group: str) -> dict[str, WorkerStatus]:
        return {worker: status for (g, worker), status in self.statuses.items() if g == group}
