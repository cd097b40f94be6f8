"""Running a Spark NLP job (:mod:`stream_clf.tools.sparknlp.job`) in Spark NLP's own environment."""

import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from stream_clf.errors import PeerError
from stream_clf.model.bundle import ModelBundle
from stream_clf.tools.sparknlp.environment import SparkNlpEnvironment
from stream_clf.tools.sparknlp.folders import export_for_spark_nlp

__all__ = ["SparkJob", "model_spec", "run_job"]


def model_spec(bundle: ModelBundle, folder: Path, *, batch_size: int) -> dict[str, Any]:
    """Export ``bundle`` into ``folder`` and describe it as a job's model: the annotator and the
    bundle's settings (``max_length`` at most 512, Spark NLP's ceiling)."""
    annotator = export_for_spark_nlp(bundle, folder)
    return {
        "folder": str(folder),
        "annotator": annotator.name,
        "case_sensitive": bundle.case_sensitive,
        "max_length": min(bundle.max_length, 512),
        "batch_size": batch_size,
    }


class SparkJob:
    """A job started in a Spark session of its own, its spec, answer and log in ``folder``."""

    def __init__(self, environment: SparkNlpEnvironment, command: str, spec: dict[str, Any], folder: Path) -> None:
        self.command = command
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "job.log"
        self._answer = folder / "answer.json"
        spec_file = folder / "spec.json"
        full = {**spec, "command": command, "jars": [str(jar) for jar in environment.jars], "output": str(self._answer)}
        spec_file.write_bytes(orjson.dumps(full))
        script = resources.files(__package__) / "job.py"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [str(environment.python), str(script), str(spec_file)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def check(self) -> None:
        """Raise :class:`PeerError` if the job has ended with an error."""
        code = self.process.poll()
        if code is not None and (code != 0 or not self._answer.is_file()):
            lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
            reason = next((line for line in reversed(lines) if "Error" in line or "Exception" in line), None)
            raise PeerError(f"the Spark NLP {self.command} job failed (exit {code}): {reason or lines[-1:]}")

    def wait(self, timeout: float) -> Any:
        """The job's JSON answer, once it has finished."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise PeerError(f"the Spark NLP {self.command} job did not finish within {timeout:.0f}s") from None
        self.check()
        return orjson.loads(self._answer.read_bytes())


def run_job(
    environment: SparkNlpEnvironment, command: str, spec: dict[str, Any], folder: Path, *, timeout: float = 1800
) -> Any:
    """Run ``command`` with ``spec`` to its end; return its JSON answer. A failure raises :class:`PeerError`."""
    return SparkJob(environment, command, spec, folder).wait(timeout)
