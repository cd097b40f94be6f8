"""Where stream-clf keeps what it downloads and builds: the broker's jars, the trained models."""

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """Where stream-clf caches downloads and built models: ``$STREAM_CLF_CACHE`` or the XDG cache."""
    if "STREAM_CLF_CACHE" in os.environ:
        return Path(os.environ["STREAM_CLF_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "stream-clf"
