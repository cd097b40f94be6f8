"""``stream-clf export``: turn a Hugging Face checkpoint (hub id or directory) into a model bundle.

The model goes through ``torch.onnx.export`` with ``dynamo=True`` (``torch.export``), eager attention,
dynamic batch and sequence axes, opset 18. The TorchScript exporter is not used: transformers 5
builds attention masks from Python-level shapes, which tracing freezes to the sample's length, so
its graphs give wrong logits on other lengths (measured: logit errors near 1.0 on every
architecture), while the dynamo graphs match PyTorch to 1e-6.

On BERT, DistilBERT, RoBERTa and ALBERT the graph's attention is then fused for ONNX Runtime
(:mod:`~stream_clf.tools.build.fusion`), unless ``fuse`` is off. After that, two checks: the
bundle's tokenizer.json with our truncation must produce the checkpoint tokenizer's own ids, and the
ONNX logits must match PyTorch's within a tolerance.
``quantize="int8"`` then applies ONNX Runtime's dynamic quantization and reports how far its logits
move and how often its labels agree with fp32.

torch and transformers are imported here and nowhere on the worker's path: ``pip install
'stream-clf[export]'``.
"""

import inspect
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import transformers

from stream_clf.errors import ExportError
from stream_clf.model.bundle import DEFAULT_MAX_LENGTH, FUSION_MASK, load_bundle, usable_positions, write_manifest
from stream_clf.model.classifier import Classifier
from stream_clf.model.windows import Truncation, Windowing
from stream_clf.tools.build.fusion import fuse_attention
from stream_clf.tools.build.quantization import SAMPLE_TEXTS, QuantizationReport, encoded_samples, quantize_int8

__all__ = ["PARITY_TEXTS", "ExportReport", "export_checkpoint", "export_module", "load_checkpoint", "torch_to_onnx"]

_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_OPSET = 18
PARITY_TEXTS = SAMPLE_TEXTS  # long enough to exercise truncation at 512 tokens

Step = Callable[[str], None]


@dataclass(frozen=True)
class ExportReport:
    """What the export did and measured."""

    bundle: Path
    labels: tuple[str, ...]
    inputs: tuple[str, ...]
    case_sensitive: bool
    max_length: int
    parity_max_logit_diff: float
    int8: QuantizationReport | None
    fusion: dict[str, int] | None = None  # the fused operators, when the attention was fused


def load_checkpoint(
    source: str, labels: Sequence[str] | None = None
) -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerBase]:
    """Load a sequence classifier and its fast tokenizer from a hub id or a local directory."""
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(source, attn_implementation="eager")
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(
            f"cannot load '{source}' ({first}); pass a local checkpoint directory, or check the model id"
            " and that the Hugging Face hub is reachable"
        ) from None
    if not tokenizer.is_fast:
        raise ExportError(f"'{source}' has no fast tokenizer (tokenizer.json); the worker needs one")
    if labels:
        if len(labels) != model.config.num_labels:
            raise ExportError(f"--labels names {len(labels)} labels but '{source}' has {model.config.num_labels}")
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {label: i for i, label in enumerate(labels)}
    return model.eval(), tokenizer


def export_checkpoint(
    source: str,
    out: Path,
    *,
    labels: Sequence[str] | None = None,
    name: str | None = None,
    max_length: int | None = None,
    lowercase: bool = False,
    quantize: str | None = None,
    fuse: bool = True,
    tolerance: float = 1e-3,
    texts: Sequence[str] = PARITY_TEXTS,
    step: Step = lambda _: None,
) -> ExportReport:
    """Export ``source`` (hub id or directory) to a bundle in ``out``."""
    step(f"loading {source}")
    model, tokenizer = load_checkpoint(source, labels)
    return export_module(
        model,
        tokenizer,
        model.config,
        out,
        name=name or Path(source.rstrip("/")).name,
        source=source,
        max_length=max_length,
        lowercase=lowercase,
        quantize=quantize,
        fuse=fuse,
        tolerance=tolerance,
        texts=texts,
        step=step,
    )


def export_module(
    model: torch.nn.Module,
    tokenizer: transformers.PreTrainedTokenizerBase,
    config: transformers.PretrainedConfig,
    out: Path,
    *,
    name: str,
    source: str,
    max_length: int | None = None,
    lowercase: bool = False,
    quantize: str | None = None,
    fuse: bool = True,
    tolerance: float = 1e-3,
    texts: Sequence[str] = PARITY_TEXTS,
    extra_manifest: dict[str, Any] | None = None,
    step: Step = lambda _: None,
) -> ExportReport:
    """Export any module that maps tokenizer outputs to logits (``.logits`` or a tensor) to a bundle.

    ``fuse`` fuses the attention for ONNX Runtime where the architecture gains
    (:func:`~stream_clf.tools.build.fusion.fuse_attention`); the fused graph runs on ONNX Runtime
    1.19 (Spark NLP 5.5's) and later.

    ``max_length`` defaults to 512 (the Spark NLP cards' setting) or the model's positions if
    fewer. The bundle is assembled in a scratch directory and moved to ``out`` only once it has
    passed the checks, so a failed export never leaves a half-written bundle behind.
    """
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize!r}: the one supported precision is int8")
    if not config.id2label:
        raise ExportError(f"'{source}' has no id2label in its config; pass --labels")
    positions = usable_positions(config.to_dict())
    max_length = max_length or min(DEFAULT_MAX_LENGTH, positions or DEFAULT_MAX_LENGTH)
    accepted = set(inspect.signature(model.forward).parameters)
    inputs = tuple(n for n in _ONNX_INPUTS if n in accepted and (n != "token_type_ids" or _emits_types(tokenizer)))
    with tempfile.TemporaryDirectory(
        prefix="stream-clf-export-", dir=out.parent if out.parent.exists() else None
    ) as tmp:
        staging = Path(tmp) / "bundle"
        staging.mkdir()
        step("exporting to ONNX")
        tokenizer.save_pretrained(staging)
        config.save_pretrained(staging)
        torch_to_onnx(model, tokenizer, inputs, staging / "model.onnx")
        case_sensitive = not lowercase and _is_case_sensitive(tokenizer)
        manifest = {
            "format": 1,
            "name": name,
            "source": source,
            "labels": [config.id2label[i] for i in range(len(config.id2label))],
            "max_length": max_length,
            "case_sensitive": case_sensitive,
            "activation": "sigmoid" if config.problem_type == "multi_label_classification" else "softmax",
            "precision": "fp32",
            "exported_with": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "onnxruntime": ort.__version__,
            },
            **(extra_manifest or {}),
        }
        write_manifest(staging, manifest)
        # The worker's encodings of the texts, for the graph rewrites to be compared on (tokenizing
        # does not depend on the graph, so once for both).
        samples = encoded_samples(staging, texts) if fuse or quantize else []
        if fuse:
            step("fusing attention")
            manifest["fusion"] = fuse_attention(
                staging / "model.onnx", config.model_type, samples, tolerance=tolerance / 10
            )
            if manifest["fusion"]:
                manifest["fusion_mask"] = FUSION_MASK
            write_manifest(staging, manifest)
        step("checking parity with PyTorch")
        _check_tokenization(tokenizer, staging, texts, max_length)
        worst = _parity(model, staging, texts, tolerance)
        manifest["parity"] = {"max_logit_diff": worst, "tolerance": tolerance, "texts": len(texts)}
        int8 = None
        if quantize == "int8":
            step("quantizing to int8")
            int8 = quantize_int8(staging / "model.onnx", samples)
            manifest["precision"] = "int8"
            manifest["int8"] = asdict(int8)
        write_manifest(staging, manifest)
        step("writing the bundle")
        load_bundle(staging)  # the worker's own checks, before the bundle is put in place
        if out.exists():
            shutil.rmtree(out)
        shutil.move(staging, out)
    return ExportReport(
        bundle=out,
        labels=tuple(manifest["labels"]),
        inputs=inputs,
        case_sensitive=case_sensitive,
        max_length=max_length,
        parity_max_logit_diff=worst,
        int8=int8,
        fusion=manifest.get("fusion"),
    )


def _emits_types(tokenizer: transformers.PreTrainedTokenizerBase) -> bool:
    return "token_type_ids" in tokenizer.model_input_names


def _is_case_sensitive(tokenizer: transformers.PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer tells "Hello World" from "hello world" (uncased ones lowercase)."""
    return tokenizer("Hello World Apple")["input_ids"] != tokenizer("hello world apple")["input_ids"]


class _LogitsOnly(torch.nn.Module):
    """Named tensor inputs in, a logits tensor out: the signature ``torch.export`` traces."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return output.logits if hasattr(output, "logits") else output


def torch_to_onnx(
    model: torch.nn.Module, tokenizer: transformers.PreTrainedTokenizerBase, inputs: Sequence[str], path: Path
) -> None:
    """Export ``model`` (logits from the named ``inputs``) to one ONNX file with dynamic batch and length."""
    sample = tokenizer(
        ["a short sample", "a somewhat longer sample text for export"], padding=True, return_tensors="pt"
    )
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    with torch.no_grad(), warnings.catch_warnings(), _quiet(registry_log):
        # The exporter warns about its own internals (and torchvision's absence), not about the model.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LogitsOnly(model),
            tuple(sample[name] for name in inputs),
            str(path),
            input_names=list(inputs),
            output_names=["logits"],
            dynamic_shapes=tuple({0: batch, 1: sequence} for _ in inputs),
            opset_version=_OPSET,
            dynamo=True,
            optimize=True,
            external_data=False,  # one self-contained model.onnx; every reference model is under 2 GB
            verbose=False,
        )


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_tokenization(
    tokenizer: transformers.PreTrainedTokenizerBase, bundle: Path, texts: Sequence[str], max_length: int
) -> None:
    """The worker's tokenization (tokenizer.json, our truncation) must give the checkpoint's own ids.

    Compared with head truncation, the checkpoint tokenizer's own, whatever the bundle's default.
    """
    classifier = Classifier(load_bundle(bundle), windowing=Windowing(Truncation.HEAD))
    for text in texts:
        ours = classifier.encode([text]).feeds["input_ids"][0].tolist()
        source = text if classifier.bundle.case_sensitive else text.lower()
        theirs = tokenizer(source, truncation=True, max_length=max_length)["input_ids"]
        if ours != theirs:
            raise ExportError(
                f"tokenizer.json encodes {text[:40]!r} as {ours[:8]}... but the checkpoint's tokenizer gives"
                f" {theirs[:8]}...; the bundle would not see what the model was trained on"
            )


def _parity(model: torch.nn.Module, bundle: Path, texts: Sequence[str], tolerance: float) -> float:
    """Largest |logit difference| between PyTorch and the bundle on ``texts``; raise above ``tolerance``."""
    classifier = Classifier(load_bundle(bundle))
    worst, worst_text = 0.0, ""
    for text in texts:
        batch = classifier.encode([text])
        onnx_logits = classifier.logits(batch)
        with torch.no_grad():
            tensors = {name: torch.from_numpy(array.astype(np.int64)) for name, array in batch.feeds.items()}
            output = model(**tensors)
            torch_logits = (output.logits if hasattr(output, "logits") else output).numpy()
        diff = float(np.max(np.abs(onnx_logits - torch_logits)))
        if diff > worst:
            worst, worst_text = diff, text
    if not worst <= tolerance:
        raise ExportError(
            f"parity check failed: ONNX logits differ from PyTorch's by up to {worst:.3g} (tolerance {tolerance:g})"
            f" on {worst_text[:60]!r}"
        )
    return worst
