"""How events are written: JSON objects, plain text, and values framed by a Schema Registry (Avro,
JSON Schema, Protobuf), and where in them the text and the id are."""

__all__ = ["INPUT_FORMATS"]

# What --input-format accepts (stream_clf.worker.decoding reads each).
INPUT_FORMATS = ("auto", "json", "text", "avro", "json-schema", "protobuf")
