"""Where a swap may load a bundle from: the worker's model roots.

A swap request names a bundle by path (or a built model's name), and anyone who may write to the
control topic can write one. So a worker loads only what lies under its roots (``--model-root``,
by default the directories of the bundles it was started with and the built models' cache), with
every link resolved, the bundle directory and each of its files alike: a link inside a root that
points outside is refused like a path outside. The refusal names no path, whether the one asked
for exists or not, so the status topic tells nothing of the worker's filesystem beyond the roots.
"""

from collections.abc import Iterable
from pathlib import Path

from stream_clf.errors import StreamClfError
from stream_clf.model.catalog import models_dir, resolve_model

__all__ = ["ModelRoots", "OutsideRootsError"]


class OutsideRootsError(StreamClfError):
    """A swap named a bundle outside the worker's model roots."""


class ModelRoots:
    """The directories a swap may load bundles from."""

    def __init__(self, roots: Iterable[Path]) -> None:
        self.roots = tuple(dict.fromkeys(Path(root).expanduser().resolve() for root in roots))

    @classmethod
    def default(cls, started_with: Iterable[str]) -> "ModelRoots":
        """The parent directory of each bundle the worker was started with, and the built models' cache."""
        parents = [resolve_model(Path(source)).expanduser().resolve().parent for source in started_with]
        return cls([*parents, models_dir()])

    def admit(self, source: str) -> Path:
        """The bundle directory ``source`` names, if it and every file in it lie under a root."""
        refused = OutsideRootsError("the model asked for is not under a model root of this worker (--model-root)")
        try:
            path = resolve_model(Path(source)).expanduser()
            resolved = path.resolve()
        except (OSError, RuntimeError, ValueError):  # a link loop, a name too long, a NUL byte
            raise refused from None
        if not self._inside(resolved):
            raise refused
        if resolved.is_dir():
            for file in resolved.rglob("*"):
                if not self._inside(file.resolve()):
                    raise refused
        return resolved

    def _inside(self, path: Path) -> bool:
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def __str__(self) -> str:
        return ",".join(str(root) for root in self.roots)
