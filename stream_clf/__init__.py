"""stream-clf: classify text events on Kafka in real time with transformer models under ONNX Runtime."""

__version__ = "0.1.0"
