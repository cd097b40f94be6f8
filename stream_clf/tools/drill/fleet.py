"""Worker processes of one consumer group, each a replica with a stable instance name, started,
stopped and replaced the way an orchestrator does it."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from stream_clf.errors import StreamClfError
from stream_clf.tools.broker import free_port

__all__ = ["Fleet", "Replica"]


@dataclass
class Replica:
    """One ``stream-clf worker`` process serving replica ``instance`` (its web port, its log)."""

    instance: str
    process: subprocess.Popen[bytes]
    web_port: int
    log: Path

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def joined(self) -> bool:
        """Whether it has received an assignment from its group (perhaps of no partition: a group's
        assignor may leave a newcomer without one when the others are at their share)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:  # not listening yet
            return False
        for family in text_string_to_metric_families(text):
            if family.name == "stream_clf_partition_assignments":
                return any(sample.value >= 1 for sample in family.samples)
        return False

    def log_tail(self, lines: int = 5) -> str:
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])

    def exit_line(self, lines: int = 5) -> str:
        """How it ended: its exit code and the last ``lines`` of its log."""
        return f"worker {self.instance} exited with {self.process.returncode}: {self.log_tail(lines)}"


@dataclass
class Fleet:
    """Replicas of one group on ``bootstrap``: ``worker_args`` are every replica's flags, and each gets
    ``--instance NAME`` and a web port of its own. Every exit code is kept, by instance, in order, and
    the last lines of each replica's log that stopped with another code than 0."""

    bootstrap: str
    worker_args: Sequence[str]
    logs: Path
    replicas: dict[str, Replica] = field(default_factory=dict)
    exits: list[tuple[str, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _started: int = 0

    def start(self, instance: str) -> Replica:
        """Start replica ``instance`` (its name stays the same across replacements, as a StatefulSet's)."""
        self._started += 1
        port = free_port()
        log = self.logs / f"{instance}-{self._started}.log"
        command = [
            sys.executable, "-m", "stream_clf", "worker", "--brokers", self.bootstrap,
            "--instance", instance, "--web-port", str(port), *self.worker_args,
        ]  # fmt: skip
        with log.open("ab") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=os.environ.copy())
        replica = Replica(instance, process, port, log)
        self.replicas[instance] = replica
        return replica

    def await_joined(self, instance: str, timeout: float = 120.0) -> float:
        """Wait until replica ``instance`` has joined its group; return how long it took."""
        replica = self.replicas[instance]
        started = time.monotonic()
        while not replica.joined():
            if not replica.running:
                raise StreamClfError(replica.exit_line())
            if time.monotonic() - started > timeout:
                raise StreamClfError(f"worker {instance} did not join after {timeout:.0f}s: {replica.log_tail()}")
            time.sleep(0.2)
        return time.monotonic() - started

    def stop(self, instance: str, timeout: float = 60.0) -> int:
        """SIGTERM replica ``instance`` and wait for it to exit (SIGKILL after ``timeout``); its exit code."""
        replica = self.replicas.pop(instance)
        replica.process.send_signal(signal.SIGTERM)
        try:
            code = replica.process.wait(timeout)
        except subprocess.TimeoutExpired:
            replica.process.kill()
            code = replica.process.wait()
        self.exits.append((instance, code))
        if code != 0:
            self.failures.append(replica.exit_line(8))
        return code

    def check(self) -> None:
        """Raise if a replica exited on its own."""
        for replica in self.replicas.values():
            if not replica.running:
                raise StreamClfError(replica.exit_line())

    def stop_all(self) -> None:
        for instance in list(self.replicas):
            self.stop(instance)
