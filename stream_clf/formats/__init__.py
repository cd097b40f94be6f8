"""How events are written: JSON objects, plain text, and values framed by a Schema Registry (Avro,
JSON Schema, Protobuf), and where in them the text and the id are."""

__all__ = ["INPUT_FORMATS", "OUTPUT_FORMATS"]

# What --input-format accepts (stream_clf.worker.decoding reads each).
INPUT_FORMATS = ("auto", "json", "text", "avro", "json-schema", "protobuf")
# What --output-format accepts (stream_clf.formats.results writes the registry ones).
OUTPUT_FORMATS = ("json", "avro", "json-schema")
