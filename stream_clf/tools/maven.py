"""Pinned jars from Maven Central, fetched by Python itself (no Maven needed) into the cache.

A lock file lists one jar per line, ``group:artifact:version sha256``, with ``#`` comments saying
how the list was resolved. A jar is downloaded once, checked against its SHA-256 and kept;
``STREAM_CLF_MAVEN_REPOSITORY`` names a mirror of Maven Central to use instead.
"""

import hashlib
import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from stream_clf.errors import StreamClfError

__all__ = ["MAVEN_REPOSITORY", "Pin", "fetch_pinned", "read_lock"]

MAVEN_REPOSITORY = os.environ.get("STREAM_CLF_MAVEN_REPOSITORY", "https://repo1.maven.org/maven2")


@dataclass(frozen=True)
class Pin:
    """One jar: its Maven coordinate and the SHA-256 of its bytes."""

    coordinate: str
    sha256: str

    @property
    def file_name(self) -> str:
        _, artifact, version = self.coordinate.split(":")
        return f"{artifact}-{version}.jar"

    @property
    def url(self) -> str:
        group, artifact, version = self.coordinate.split(":")
        return f"{MAVEN_REPOSITORY}/{group.replace('.', '/')}/{artifact}/{version}/{self.file_name}"


def read_lock(lock: Traversable) -> list[Pin]:
    """The pins of a lock file."""
    pins = []
    for line in lock.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            coordinate, digest = line.split()
            pins.append(Pin(coordinate, digest))
    return pins


def fetch_pinned(
    pins: list[Pin], libs: Path, *, what: str, quiet: bool, error: type[StreamClfError] = StreamClfError, hint: str = ""
) -> list[Path]:
    """The jars of ``pins`` in ``libs``, downloading those not there yet; raises ``error`` (with
    ``hint`` appended) when one cannot be had or does not match its pin."""
    missing = [pin for pin in pins if not (libs / pin.file_name).is_file()]
    if missing:
        libs.mkdir(parents=True, exist_ok=True)
        columns = (TextColumn(f"fetching {what}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, disable=quiet, transient=True) as progress:
            task = progress.add_task("jars", total=len(missing))

            def fetch(pin: Pin) -> None:
                try:
                    with urllib.request.urlopen(pin.url, timeout=120) as response:  # noqa: S310 (https, fixed host)
                        data = response.read()
                except OSError as failure:
                    raise error(f"cannot download {pin.url} ({failure}){hint}") from None
                if hashlib.sha256(data).hexdigest() != pin.sha256:
                    raise error(f"{pin.url} does not match its pinned SHA-256; refusing to use it")
                partial = libs / (pin.file_name + ".part")
                partial.write_bytes(data)
                partial.rename(libs / pin.file_name)
                progress.advance(task)

            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(fetch, missing))
    return [libs / pin.file_name for pin in pins]
