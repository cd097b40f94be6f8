"""Protobuf message classes made from a schema alone (the worker has no generated code for its producers'
messages).

A registry holds a Protobuf schema in one of two forms: ``.proto`` source, or (as confluent-kafka's
own ``ProtobufSerializer`` registers it, and Apicurio keeps it) a base64 ``FileDescriptorProto``. The
second is read as it is. The first is compiled by ``protoc`` as grpcio-tools ships it (a maintained
compiler, pinned by pip), in a child process with a time limit: a hostile or broken schema costs that
process, never the worker. Its output, a ``FileDescriptorSet`` with the imports included, becomes
descriptors and message classes here.
(The registry's own ``format=serialized`` answer was tried first: Apicurio returns the descriptor's raw
bytes as a JSON string rather than base64, which is not what Confluent's API promises.)
"""

import base64
import binascii
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from stream_clf.errors import EventError, Reason

__all__ = ["COMPILE_SECONDS", "message_classes"]

COMPILE_SECONDS = 30.0
_MAIN = "stream_clf_schema.proto"


def message_classes(text: str, references: Mapping[str, str]) -> dict[tuple[int, ...], Any]:
    """Every message type of the schema ``text`` by its message indexes (``(0,)`` the first top-level
    one, ``(1, 0)`` the first nested in the second), as classes that parse bodies. ``references``
    are the schemas of the files it imports, by the names it imports them with."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    serialized = [_serialized(source) for source in (*references.values(), text)]
    if all(file is not None for file in serialized):
        files = [file for file in serialized if file is not None]
        main = files[-1]
    else:
        files = list(descriptor_pb2.FileDescriptorSet.FromString(_compile(text, references)).file)
        main = next(file for file in files if file.name == _MAIN)
    pool = descriptor_pool.DescriptorPool()
    added = {file.name for file in files}
    for name in sorted({dependency for file in files for dependency in file.dependency} - added):
        pool.Add(_well_known(name))
    for file in files:
        pool.Add(file)
    prefix = f"{main.package}." if main.package else ""
    classes = {}
    pending = [((index,), prefix + message.name, message) for index, message in enumerate(main.message_type)]
    while pending:
        indexes, name, message = pending.pop()
        classes[indexes] = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
        pending.extend(
            ((*indexes, index), f"{name}.{nested.name}", nested) for index, nested in enumerate(message.nested_type)
        )
    return classes


def _serialized(text: str) -> Any:
    """The ``FileDescriptorProto`` that ``text`` is in base64, or None when it is ``.proto`` source."""
    from google.protobuf import descriptor_pb2
    from google.protobuf.message import DecodeError

    try:
        raw = base64.b64decode(text.strip(), validate=True)
        file = descriptor_pb2.FileDescriptorProto.FromString(raw)
    except (binascii.Error, ValueError, DecodeError):
        return None
    return file if file.name else None


def _well_known(name: str) -> Any:
    """The descriptor of an import no reference supplies: a well-known type, Confluent's meta.proto."""
    import importlib

    from google.protobuf import descriptor_pb2, descriptor_pool

    module = {"confluent/meta.proto": "confluent_kafka.schema_registry.confluent.meta_pb2"}.get(
        name, "google.protobuf." + PurePosixPath(name).stem + "_pb2"
    )
    try:
        importlib.import_module(module)
        found = descriptor_pool.Default().FindFileByName(name)
    except (ImportError, KeyError):
        raise EventError(Reason.UNDECODABLE, f"the schema imports {name!r}, which no reference supplies") from None
    file = descriptor_pb2.FileDescriptorProto()
    found.CopyToProto(file)
    return file


def _compile(text: str, references: Mapping[str, str]) -> bytes:
    """The ``FileDescriptorSet`` of ``text`` and its imports, compiled by protoc in a child process."""
    import grpc_tools

    builtin = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory(prefix="stream-clf-proto-") as folder:
        root = Path(folder) / "src"
        for name, reference in references.items():
            path = PurePosixPath(name)
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise EventError(Reason.UNDECODABLE, f"the schema references {name!r}, outside its own folder")
            if path.parts[0] == "google":  # the well-known types: protoc's own copies
                continue
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(reference)
        root.mkdir(exist_ok=True)
        (root / _MAIN).write_text(text)
        out = Path(folder) / "descriptors.pb"
        command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{root}", f"-I{builtin}", "--include_imports",
                   f"--descriptor_set_out={out}", _MAIN]  # fmt: skip
        try:
            compiled = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            raise EventError(Reason.UNDECODABLE, f"protoc took over {COMPILE_SECONDS:.0f}s on the schema") from None
        if compiled.returncode != 0:
            message = (compiled.stderr or compiled.stdout).strip().replace(str(root) + "/", "")
            raise EventError(Reason.UNDECODABLE, f"the Protobuf schema does not compile: {message}")
        return out.read_bytes()
