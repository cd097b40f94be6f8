"""A real Apache Kafka broker (KRaft) on 127.0.0.1, without Docker: one node, or a cluster of several.

The broker's jars come from Maven Central: the runtime closure of ``kafka_2.13`` is pinned, with
SHA-256 sums, in ``kafka-<version>.lock`` beside this module, fetched once by Python itself (no
Maven needed, only Java 17+) and cached. ``KAFKA_HOME`` points at an existing Kafka installation
to use instead. The data directory survives restarts unless it is wiped.

A :class:`LocalCluster` is several such nodes, each a broker and a controller, sharing one quorum
and one cluster id: the shape of a small production cluster (replication factor 3,
``min.insync.replicas`` 2), on one machine.
"""

import base64
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from stream_clf.cache import cache_root
from stream_clf.errors import BrokerError
from stream_clf.kafka.connection import Connection
from stream_clf.kafka.topics import wait_for_broker
from stream_clf.tools.maven import fetch_pinned, read_lock

__all__ = ["KAFKA_VERSION", "LocalCluster", "LocalKafka", "die_with_parent", "free_port", "resolve_jars"]

KAFKA_VERSION = "3.9.2"
_LOG4J = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaConfig=WARN
log4j.logger.org.apache.kafka.clients=WARN
"""
_LOG4J2 = """\
appender.file.type=File
appender.file.name=file
appender.file.fileName={log}
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def resolve_jars(version: str = KAFKA_VERSION, *, quiet: bool = False) -> Path:
    """The directory of broker jars: ``$KAFKA_HOME/libs``, or the pinned jars, fetched if not cached."""
    if "KAFKA_HOME" in os.environ:
        libs = Path(os.environ["KAFKA_HOME"]).expanduser() / "libs"
        if not any(libs.glob("kafka_2.*.jar")):
            raise BrokerError(f"KAFKA_HOME={os.environ['KAFKA_HOME']!r} has no libs/kafka_2.*.jar; unset it or fix it")
        return libs
    lock = resources.files(__package__) / f"kafka-{version}.lock"
    if not lock.is_file():
        raise BrokerError(f"no pinned jar list for Kafka {version}; use {KAFKA_VERSION} or set KAFKA_HOME")
    libs = cache_root() / f"kafka-{version}" / "libs"
    fetch_pinned(
        read_lock(lock),
        libs,
        what="Kafka broker jars",
        quiet=quiet,
        error=BrokerError,
        hint="; set KAFKA_HOME to a Kafka install",
    )
    return libs


def _cluster_id() -> str:
    """A random KRaft cluster id: 22 URL-safe base64 characters, never starting with "-".

    (The storage tool would read a leading "-" as an option; Kafka's own generator avoids it too.)
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise BrokerError("the local broker needs Java 17 or newer: install a JRE (e.g. openjdk-17-jre-headless)")
    return java


# Loaded here, in the parent, so that the child runs no loader code between fork and exec.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when the process that started it dies.

    Without this, a test run or ``stream-clf broker`` killed with SIGKILL leaves a JVM holding
    its ports. Linux sends the signal when the *thread* that forked exits, so start brokers from a
    thread that outlives them (the main thread, as the CLI and the test fixtures do).
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class LocalKafka:
    """One KRaft broker+controller process on 127.0.0.1, with its data in ``data_dir``.

    ``extra_properties`` are added to (or override) the generated ``server.properties``;
    ``format_args`` are added to the storage format command of a new data directory (e.g. SCRAM
    users: ``--add-scram SCRAM-SHA-256=[name=alice,password=...]``). ``node_id``, ``quorum`` (the
    controller voters, ``ID@HOST:PORT,...``) and ``cluster_id`` make it one node of a cluster.
    """

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    extra_properties: Mapping[str, str] = field(default_factory=dict)
    format_args: Sequence[str] = ()
    node_id: int = 1
    quorum: str | None = None
    cluster_id: str | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def wipe(self) -> None:
        """Delete the data directory: every topic and offset."""
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def start(self, timeout: float = 90.0, *, quiet: bool = True) -> None:
        """Start the broker and return once it answers metadata requests."""
        self.launch(quiet=quiet)
        self.await_ready(timeout)

    def launch(self, *, quiet: bool = True) -> None:
        """Start the broker's process and return at once (a cluster's nodes answer only once a
        majority of its controllers runs: launch them all, then await each)."""
        for port in (self.port, self.controller_port):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    raise BrokerError(f"port {port} on 127.0.0.1 is in use: is a broker already running? pick --port")
        libs = resolve_jars(quiet=quiet)
        java = _java()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        classpath = str(libs / "*")
        logging_flags = [
            f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}",
            f"-Dlog4j2.configurationFile=file:{self.data_dir / 'log4j2.properties'}",
        ]
        if not (self.data_dir / "kraft" / "meta.properties").is_file():
            cluster_id = self.cluster_id or _cluster_id()
            formatted = subprocess.run(
                [java, *logging_flags, "-cp", classpath, "kafka.tools.StorageTool", "format",
                 "-t", cluster_id, "-c", str(config), *self.format_args],
                capture_output=True,
                text=True,
                check=False,
            )  # fmt: skip
            if formatted.returncode != 0:
                raise BrokerError(f"formatting {self.data_dir} failed: {formatted.stderr.strip() or formatted.stdout}")
        with self.log_file.open("ab") as console:
            self._process = subprocess.Popen(
                [java, f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                 *logging_flags, "-cp", classpath, "kafka.Kafka", str(config)],
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,  # noqa: PLW1509 (no locks taken, see die_with_parent)
            )  # fmt: skip

    def await_ready(self, timeout: float = 90.0) -> None:
        """Return once the launched broker answers metadata requests; stop it and raise if it does not."""
        if self._process is None:
            raise BrokerError("the broker is not running")
        deadline = time.monotonic() + timeout
        while self._process.poll() is None and time.monotonic() < deadline:
            try:
                wait_for_broker(Connection.to(self.bootstrap), timeout=1.0)
                return
            except BrokerError:
                continue
        code = self._process.poll()
        self.stop()
        reason = f"exited with code {code}" if code is not None else f"did not answer within {timeout:.0f}s"
        raise BrokerError(f"Kafka broker {reason}; see {self.log_file}: {self._log_tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the broker (a controlled shutdown), SIGKILL it after ``timeout``; return its exit code."""
        if self._process is None:
            return None
        process, self._process = self._process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def terminate(self) -> None:
        """SIGTERM the broker and return at once (:meth:`stop` waits for it)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def wait(self) -> int:
        """Block until the broker process exits; return its exit code."""
        if self._process is None:
            raise BrokerError("the broker is not running")
        return self._process.wait()

    def __enter__(self) -> "LocalKafka":
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _write_config(self) -> Path:
        properties = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.quorum or f"{self.node_id}@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir / "kraft"),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            **self.extra_properties,
        }
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
        (self.data_dir / "log4j.properties").write_text(_LOG4J.format(log=self.log_file))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_file))
        return config

    def _log_tail(self, lines: int = 3) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in tail)


@dataclass
class LocalCluster:
    """``nodes`` KRaft nodes on 127.0.0.1, each a broker and a controller of one quorum, in ``root``.

    Node ``i`` (from 0) listens on ``port + 2i`` for clients and ``port + 2i + 1`` for the quorum
    unless ``ports`` names its pairs. Internal topics (offsets, transactions) have a replica on
    every node, up to 3, and need 2 in sync; other topics take the cluster's defaults, which
    ``extra_properties`` may set (``default.replication.factor``, ``min.insync.replicas``).
    """

    root: Path
    nodes: int = 3
    port: int = 9092
    ports: Sequence[tuple[int, int]] | None = None
    heap: str = "384m"
    extra_properties: Mapping[str, str] = field(default_factory=dict)
    members: list[LocalKafka] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        pairs = self.ports or [(self.port + 2 * i, self.port + 2 * i + 1) for i in range(self.nodes)]
        quorum = ",".join(f"{i + 1}@127.0.0.1:{controller}" for i, (_, controller) in enumerate(pairs))
        replicas, in_sync = min(3, self.nodes), min(2, self.nodes)
        internal = {
            "offsets.topic.replication.factor": str(replicas),
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(in_sync),
            "share.coordinator.state.topic.replication.factor": str(replicas),
            "share.coordinator.state.topic.min.isr": str(in_sync),
        }
        cluster_id = _cluster_id()
        self.members = [
            LocalKafka(
                self.root / f"node-{i + 1}",
                port=client,
                controller_port=controller,
                heap=self.heap,
                extra_properties={**internal, **self.extra_properties},
                node_id=i + 1,
                quorum=quorum,
                cluster_id=cluster_id,
            )
            for i, (client, controller) in enumerate(pairs)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(member.bootstrap for member in self.members)

    def wipe(self) -> None:
        """Delete every node's data directory."""
        for member in self.members:
            member.wipe()

    def start(self, timeout: float = 120.0, *, quiet: bool = True) -> None:
        """Start every node and return once each answers metadata requests."""
        try:
            for member in self.members:
                member.launch(quiet=quiet)
            for member in self.members:
                member.await_ready(timeout)
            self._await_registered(timeout)
        except BrokerError:
            self.stop()
            raise

    def _await_registered(self, timeout: float) -> None:
        """Wait until every node's metadata lists every node: a node answers before it knows the others,
        and a replication factor of all of them would be refused meanwhile."""
        admins = [Connection.to(member.bootstrap).admin() for member in self.members]
        deadline = time.monotonic() + timeout
        while any(len(admin.list_topics(timeout=5).brokers) < len(self.members) for admin in admins):
            if time.monotonic() > deadline:
                raise BrokerError(f"the metadata did not list all {len(self.members)} nodes in {timeout:.0f}s")
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node at once (SIGTERM to all, then wait for each): one by one, the last would wait
        for a quorum that is gone before its controlled shutdown gave up."""
        for member in self.members:
            member.terminate()
        for member in reversed(self.members):
            member.stop(timeout)

    def wait(self) -> int:
        """Block until the first node's process exits; return its exit code."""
        return self.members[0].wait()

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
