"""A real Schema Registry on 127.0.0.1, without Docker: Apicurio Registry, which serves Confluent's API.

Confluent's own registry is not on Maven Central; Apicurio's is, as one Quarkus tarball
(``io.apicurio:apicurio-registry-app:3.3.3:all``, pinned below by its SHA-512), fetched once into the
cache and unpacked there. It needs Java 21 or newer: ``JAVA_HOME`` if it is one, else the newest JDK
beside the system's default one (``/usr/lib/jvm/*``). It keeps its schemas in memory: a restart forgets
them. Its Confluent-compatible API is at ``/apis/ccompat/v7``.
"""

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from stream_clf.cache import cache_root
from stream_clf.errors import StreamClfError
from stream_clf.tools.broker import die_with_parent, free_port
from stream_clf.tools.maven import MAVEN_REPOSITORY

__all__ = ["APICURIO_VERSION", "LocalSchemaRegistry", "RegistryError", "java_21", "resolve_registry"]

APICURIO_VERSION = "3.3.3"
_SHA512 = (
    "dd081e0bb14bb94ac9806eb768667b10a7292a8a75a81cbbfec1c99d920bc356"
    "97fc5e567d74b7bf94a0105648b90480842822959815d2965e0dc6c9524c92d3"
)
_ARTIFACT = f"io/apicurio/apicurio-registry-app/{APICURIO_VERSION}/apicurio-registry-app-{APICURIO_VERSION}-all.tar.gz"
CCOMPAT_PATH = "/apis/ccompat/v7"
CLIENT_TIMEOUT_SECONDS = 10.0


class RegistryError(StreamClfError):
    """The local Schema Registry cannot be had, or did not start."""


def resolve_registry(*, quiet: bool = False) -> Path:
    """The unpacked registry (its ``quarkus-run.jar`` inside), fetched and checked first if not cached."""
    home = cache_root() / f"apicurio-registry-{APICURIO_VERSION}"
    if (home / "app" / "quarkus-run.jar").is_file():
        return home / "app"
    home.mkdir(parents=True, exist_ok=True)
    tarball = home / "apicurio-registry-app-all.tar.gz"
    if not tarball.is_file():
        _download(f"{MAVEN_REPOSITORY}/{_ARTIFACT}", tarball, quiet=quiet)
    digest = hashlib.sha512()
    with tarball.open("rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != _SHA512:
        tarball.unlink()
        raise RegistryError(f"{_ARTIFACT} does not match its pinned SHA-512; refusing to use it")
    unpacking = home / "app.part"
    shutil.rmtree(unpacking, ignore_errors=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(unpacking, filter="data")
    unpacking.rename(home / "app")
    tarball.unlink()
    return home / "app"


def _download(url: str, to: Path, *, quiet: bool) -> None:
    partial = to.with_suffix(".part")
    columns = (TextColumn("fetching the Schema Registry (Apicurio)"), BarColumn(), DownloadColumn())
    try:
        with (
            urllib.request.urlopen(url, timeout=120) as response,  # noqa: S310 (https, fixed host)
            partial.open("wb") as out,
            Progress(*columns, disable=quiet, transient=True) as progress,
        ):
            task = progress.add_task("registry", total=int(response.headers.get("Content-Length") or 0) or None)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                progress.advance(task, len(chunk))
    except OSError as failure:
        raise RegistryError(f"cannot download {url} ({failure})") from None
    partial.rename(to)


def java_21() -> str:
    """A Java 21+ ``java``: ``JAVA_HOME``'s if it is one, else the newest beside the default JVM."""
    candidates = []
    if "JAVA_HOME" in os.environ:
        candidates.append(Path(os.environ["JAVA_HOME"]))
    default = shutil.which("java")
    if default:
        jvms = Path(default).resolve().parent.parent.parent  # /usr/lib/jvm/<jdk>/bin/java -> /usr/lib/jvm
        candidates.extend(sorted(jvms.iterdir(), key=_major, reverse=True) if jvms.is_dir() else [])
    for home in candidates:
        if _major(home) >= 21 and (home / "bin" / "java").is_file():
            return str(home / "bin" / "java")
    raise RegistryError(
        "the Schema Registry (Apicurio 3) needs Java 21 or newer: set JAVA_HOME to one (found none beside the default)"
    )


def _major(home: Path) -> int:
    """The Java major version of a JDK or JRE folder, from its ``release`` file (0 when unknown)."""
    try:
        release = (home / "release").read_text()
    except OSError:
        return 0
    found = re.search(r'JAVA_VERSION="(\d+)', release)
    return int(found.group(1)) if found else 0


@dataclass
class LocalSchemaRegistry:
    """Apicurio Registry on 127.0.0.1:``port``, its log in ``log_file``."""

    log_file: Path
    port: int = 8081
    heap: str = "512m"
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """The Confluent-compatible API, as ``--schema-registry`` takes it."""
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    def client_config(self) -> dict[str, Any]:
        """confluent-kafka's ``SchemaRegistryClient`` configuration for this registry.

        With a request timeout: without one, a request the registry never answers (seen once right
        after a restart) blocks its caller for good; with one, the client retries it.
        """
        return {"url": self.url, "timeout": CLIENT_TIMEOUT_SECONDS}

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 180.0, *, quiet: bool = True) -> None:
        """Start the registry and return once its API answers."""
        app = resolve_registry(quiet=quiet)
        java = java_21()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [java, f"-Xmx{self.heap}", "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={self.port}",
                 # Its management interface (health, metrics) would bind 0.0.0.0:9000: loopback, a free port.
                 "-Dquarkus.management.host=127.0.0.1", f"-Dquarkus.management.port={free_port()}",
                 "-jar", str(app / "quarkus-run.jar")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=app,
                preexec_fn=die_with_parent,  # noqa: PLW1509 (no locks taken, see broker.die_with_parent)
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while self._process.poll() is None and time.monotonic() < deadline:
            if self.answers():
                return
            time.sleep(0.5)
        code = self._process.poll()
        self.stop()
        reason = f"exited with code {code}" if code is not None else f"did not answer within {timeout:.0f}s"
        raise RegistryError(f"the Schema Registry {reason}; see {self.log_file}")

    def answers(self) -> bool:
        """Whether its API answers now."""
        try:
            with urllib.request.urlopen(f"{self.url}/subjects", timeout=2) as response:  # noqa: S310 (loopback)
                return response.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM it, SIGKILL it after ``timeout``."""
        if self._process is None:
            return
        process, self._process = self._process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> "LocalSchemaRegistry":
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
