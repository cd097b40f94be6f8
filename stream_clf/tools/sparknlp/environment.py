"""Spark NLP, set up beside stream-clf: its own Python environment and its jars, never the worker's.

stream-clf never imports pyspark. The Spark side lives in a virtual environment of its own in the
cache (``<cache>/spark-nlp-5.5.3/venv``: ``pyspark==3.5.7``, ``spark-nlp==5.5.3``, numpy below 2,
which pyspark.ml needs) and runs :mod:`stream_clf.tools.sparknlp.job` as a script there. Its jars are
pinned in ``spark-nlp-5.5.3.lock`` and fetched from Maven Central (see :mod:`stream_clf.tools.maven`).

Spark NLP 5.5.3 is the newest that resolves from Maven Central (7.0.0's Scala 2.13 jar is not
there), on Spark 3.5.7 (Scala 2.12) and Java 17. Three of its dependencies are John Snow Labs'
own native builds that Maven Central does not serve (TensorFlow, llama.cpp, OpenVINO): they are left
out, so only the ONNX engine works, and ``pretrained()`` downloads nothing.
"""

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.console import Console

from stream_clf.cache import cache_root
from stream_clf.errors import PeerError
from stream_clf.tools.maven import fetch_pinned, read_lock

__all__ = ["PYTHON_PACKAGES", "SPARK_NLP_VERSION", "SparkNlpEnvironment", "spark_nlp_environment"]

SPARK_NLP_VERSION = "5.5.3"
PYSPARK_VERSION = "3.5.7"
PYTHON_PACKAGES = (f"pyspark=={PYSPARK_VERSION}", f"spark-nlp=={SPARK_NLP_VERSION}", "numpy==1.26.4")
_READY = ".stream-clf-ready"


@dataclass(frozen=True)
class SparkNlpEnvironment:
    """Where the Spark side is: its Python and its jars."""

    python: Path
    jars: tuple[Path, ...]


def spark_nlp_environment(*, quiet: bool = False) -> SparkNlpEnvironment:
    """The Spark NLP environment, set up on first use (about 450 MB of Python packages and 300 MB of
    jars, downloaded once into the cache)."""
    if not shutil.which("java") and "JAVA_HOME" not in os.environ:
        raise PeerError("Spark needs Java 17 or newer: install a JDK (apt install openjdk-17-jre-headless)")
    home = cache_root() / f"spark-nlp-{SPARK_NLP_VERSION}"
    python = _virtual_environment(home / "venv", quiet=quiet)
    lock = resources.files(__package__) / f"spark-nlp-{SPARK_NLP_VERSION}.lock"
    jars = fetch_pinned(read_lock(lock), home / "jars", what="Spark NLP jars", quiet=quiet, error=PeerError)
    return SparkNlpEnvironment(python, tuple(jars))


def _virtual_environment(venv: Path, *, quiet: bool) -> Path:
    python = venv / "bin" / "python"
    marker = venv / _READY
    wanted = "\n".join(PYTHON_PACKAGES)
    if marker.is_file() and marker.read_text() == wanted:
        return python
    console = Console(stderr=True, quiet=quiet)
    with console.status(f"installing {', '.join(PYTHON_PACKAGES)} into {venv} (once)"):
        if not python.exists():
            _run([sys.executable, "-m", "venv", str(venv)], "create a virtual environment for Spark NLP")
        _run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PYTHON_PACKAGES],
            "install pyspark and spark-nlp",
        )
    marker.write_text(wanted)
    return python


def _run(command: list[str], what: str) -> None:
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        last = (finished.stderr or finished.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PeerError(f"could not {what}: {last[0]}")
