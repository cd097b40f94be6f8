"""A model bundle: the directory the worker serves, read and checked once at start.

Layout::

    model.onnx       inputs input_ids, attention_mask [, token_type_ids]; output logits [batch, labels]
    tokenizer.json   a Hugging Face fast tokenizer (plus any other tokenizer files, ignored here)
    config.json      Hugging Face config: id2label, and model_type / problem_type / pad_token_id
    stream_clf.json  optional manifest: name, max_length, case_sensitive, activation, precision,
                     truncation (the strategy the model was trained for; the worker's default)

Without a manifest the defaults follow the Spark NLP cards: max_length 512, case sensitive unless
``tokenizer_config.json`` says ``do_lower_case``, softmax unless ``problem_type`` is multi-label.
"""

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stream_clf.errors import ModelError
from stream_clf.model.windows import DEFAULT_TRUNCATION, Truncation

__all__ = [
    "FUSION_MASK",
    "MANIFEST",
    "REQUIRED_FILES",
    "ModelBundle",
    "content_hash",
    "load_bundle",
    "read_manifest",
    "usable_positions",
    "write_manifest",
]

log = logging.getLogger(__name__)

MANIFEST = "stream_clf.json"
REQUIRED_FILES = ("model.onnx", "tokenizer.json", "config.json")
ACTIVATIONS = ("softmax", "sigmoid")
DEFAULT_MAX_LENGTH = 512
# How a fused graph's attention takes the padding mask (the manifest's ``fusion_mask``): as
# MultiHeadAttention's key padding mask, which ONNX Runtime 1.19 (Spark NLP 5.5's) takes too.
FUSION_MASK = "key_padding"
# Models whose position ids start after the padding index, so the first ones are unusable.
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer"}


@dataclass(frozen=True)
class ModelBundle:
    """What the classifier needs to know about a bundle, checked for consistency."""

    path: Path
    name: str
    version: str
    labels: tuple[str, ...]
    max_length: int
    case_sensitive: bool
    activation: str
    precision: str
    pad_token_id: int
    truncation: Truncation = DEFAULT_TRUNCATION
    fused: bool = False  # the export fused its attention (the manifest's ``fusion``)

    @property
    def model_file(self) -> Path:
        return self.path / "model.onnx"

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"


def load_bundle(path: Path | str) -> ModelBundle:
    """Read a bundle directory, or raise :class:`ModelError` naming what is wrong in one line."""
    path = Path(path)
    where = f"model bundle '{path}'"
    if not path.is_dir():
        raise ModelError(f"{where}: no such directory; build one with `stream-clf export` or pass --model DIR")
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise ModelError(f"{where}: {name} is missing; a bundle holds {', '.join(REQUIRED_FILES)}")
    config = _read_json(path / "config.json", where)
    manifest = _read_json(path / MANIFEST, where) if (path / MANIFEST).is_file() else {}
    tokenizer_config = (
        _read_json(path / "tokenizer_config.json", where) if (path / "tokenizer_config.json").is_file() else {}
    )
    labels = _labels(config, where)
    activation = manifest.get("activation") or (
        "sigmoid" if config.get("problem_type") == "multi_label_classification" else "softmax"
    )
    if activation not in ACTIVATIONS:
        raise ModelError(f"{where}: {MANIFEST} has activation {activation!r}; use one of {', '.join(ACTIVATIONS)}")
    max_length = manifest.get("max_length", DEFAULT_MAX_LENGTH)
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise ModelError(f"{where}: {MANIFEST} has max_length {max_length!r}; expected a whole number >= 2")
    _check_positions(config, max_length, where)
    case_sensitive = manifest.get("case_sensitive", not tokenizer_config.get("do_lower_case", False))
    if not isinstance(case_sensitive, bool):
        raise ModelError(f"{where}: {MANIFEST} has case_sensitive {case_sensitive!r}; expected true or false")
    try:
        truncation = Truncation(manifest.get("truncation", DEFAULT_TRUNCATION))
    except ValueError:
        raise ModelError(
            f"{where}: {MANIFEST} has truncation {manifest['truncation']!r};"
            f" use one of {', '.join(t.value for t in Truncation)}"
        ) from None
    pad_token_id = config.get("pad_token_id")
    version = content_hash(path)
    recorded = manifest.get("content_hash")
    if recorded and recorded != version:
        log.warning("event=bundle_changed_since_export bundle=%s recorded=%s actual=%s", path, recorded, version)
    return ModelBundle(
        path=path,
        name=str(manifest.get("name") or path.resolve().name),
        version=version,
        labels=labels,
        max_length=max_length,
        case_sensitive=case_sensitive,
        activation=activation,
        precision=str(manifest.get("precision", "fp32")),
        pad_token_id=pad_token_id if isinstance(pad_token_id, int) else 0,
        truncation=truncation,
        fused=bool(isinstance(fusion := manifest.get("fusion"), dict) and fusion.get("MultiHeadAttention")),
    )


def content_hash(path: Path) -> str:
    """A short SHA-256 over every file's relative name and bytes: the bundle's ``model_version``.

    The manifest enters in canonical form without its own ``content_hash`` field, so an exporter
    can record the hash inside the bundle it describes.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        if file == path / MANIFEST:
            manifest = orjson.loads(file.read_bytes())
            manifest.pop("content_hash", None)
            digest.update(orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS))
            continue
        with file.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def read_manifest(path: Path) -> dict[str, Any]:
    """The bundle's manifest, or an empty one."""
    file = path / MANIFEST
    return _read_json(file, f"model bundle '{path}'") if file.is_file() else {}


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest, recording in it the content hash of the bundle it completes."""
    manifest = {key: value for key, value in manifest.items() if key != "content_hash"}
    (path / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    manifest["content_hash"] = content_hash(path)
    (path / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))


def _read_json(file: Path, where: str) -> dict[str, Any]:
    try:
        document = orjson.loads(file.read_bytes())
    except orjson.JSONDecodeError as error:
        raise ModelError(f"{where}: {file.name} is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise ModelError(f"{where}: {file.name} must hold a JSON object")
    return document


def _labels(config: dict[str, Any], where: str) -> tuple[str, ...]:
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise ModelError(f"{where}: config.json has no id2label; export it with labels, e.g. --labels neg,pos")
    try:
        by_index = {int(index): str(label) for index, label in id2label.items()}
    except ValueError:
        raise ModelError(f"{where}: config.json id2label keys must be label indices 0..n-1") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise ModelError(f"{where}: config.json id2label keys must be label indices 0..n-1, got {sorted(by_index)}")
    labels = tuple(by_index[i] for i in range(len(by_index)))
    if len(set(labels)) != len(labels):
        raise ModelError(f"{where}: config.json id2label names a label twice: {list(labels)}")
    return labels


def usable_positions(config: dict[str, Any]) -> int | None:
    """How many tokens the model can take, from config.json (None when it does not say)."""
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int):
        return None
    if config.get("model_type") in _OFFSET_POSITION_MODELS:
        # Position ids count from pad_token_id + 1 (RoBERTa's pad is 1: 514 positions, 512 usable).
        pad = config.get("pad_token_id")
        return positions - (pad + 1 if isinstance(pad, int) else 2)
    return positions


def _check_positions(config: dict[str, Any], max_length: int, where: str) -> None:
    usable = usable_positions(config)
    if usable is not None and max_length > usable:
        raise ModelError(
            f"{where}: max_length {max_length} exceeds the model's {usable} positions; lower max_length in {MANIFEST}"
        )
