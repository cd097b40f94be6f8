"""Running a Spark NLP job (:mod:`stream_clf.sparknlp.job`) in Spark NLP's own environment."""

import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from stream_clf.errors import PeerError
from stream_clf.sparknlp.environment import SparkNlpEnvironment

__all__ = ["run_job"]


def run_job(environment: SparkNlpEnvironment, command: str, spec: dict[str, Any], *, timeout: float = 1800) -> Any:
    """Run ``command`` with ``spec`` in a Spark session of its own; return its JSON answer.

    A job that fails raises :class:`PeerError` with the last lines of its output.
    """
    script = resources.files(__package__) / "job.py"
    with tempfile.TemporaryDirectory(prefix="stream-clf-spark-job-") as scratch:
        root = Path(scratch)
        spec_file, answer_file, log = root / "spec.json", root / "answer.json", root / "job.log"
        full = {**spec, "command": command, "jars": [str(jar) for jar in environment.jars], "output": str(answer_file)}
        spec_file.write_bytes(orjson.dumps(full))
        with log.open("wb") as sink:
            try:
                finished = subprocess.run(
                    [str(environment.python), str(script), str(spec_file)],
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise PeerError(f"the Spark NLP {command} job did not finish within {timeout:.0f}s") from None
        if finished.returncode != 0 or not answer_file.is_file():
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            reason = next((line for line in reversed(lines) if "Error" in line or "Exception" in line), None)
            raise PeerError(f"the Spark NLP {command} job failed (exit {finished.returncode}): {reason or lines[-1:]}")
        return orjson.loads(answer_file.read_bytes())
