"""Fine-tuning the encoder and head together, on CPU in bfloat16 where the CPU has it.

A frozen encoder with a linear head stops short on tasks its sentence embedding was not made for
(81.7% on IMDB sentiment); training every layer on the task is what the reference cards' models did.
On 2 cores the cost is the sequence length, so the training rows are cut the way the worker cuts
a long text (``head+tail`` by default: the opening and the verdict of a review), by the same code
(:func:`stream_clf.model.windows.plan`), and texts of similar length are batched together so short
ones pay for no padding. With AVX-512 BF16 (or a GPU) the matrix products run in bfloat16 under
autocast, about 3x faster than fp32 on these CPUs; the weights and optimizer stay fp32.
"""

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer

from stream_clf.model.windows import Template, Truncation, Windowing, plan

__all__ = ["FineTuning", "fine_tune"]

Progress = Callable[[str, int | None], Callable[[int], None]]


@dataclass(frozen=True)
class FineTuning:
    """How to fine-tune: tokens per training row, passes over the data, and the optimizer's settings."""

    max_length: int = 128
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 1e-4
    warmup: float = 0.06
    truncation: Truncation = Truncation.HEAD_TAIL
    seed: int = 20261123


def fine_tune(
    model: torch.nn.Module,
    tokenizer: transformers.PreTrainedTokenizerBase,
    texts: Sequence[str],
    targets: Sequence[int],
    *,
    settings: FineTuning,
    progress: Progress,
) -> None:
    """Train ``model`` (which takes input_ids, attention_mask, token_type_ids and returns logits) in place."""
    plain = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    plain.no_padding()
    plain.no_truncation()
    template = Template.probe(plain)
    if template is None:
        raise ValueError("the tokenizer does not wrap a text as [prefix] text [suffix]")
    windowing = Windowing(settings.truncation)
    encodings = plain.encode_batch(list(texts), add_special_tokens=False)
    rows = [plan(encoding.ids, template, settings.max_length, windowing).rows[0] for encoding in encodings]
    batches = _length_batches([len(ids) for ids, _ in rows], settings.batch_size, settings.seed, settings.epochs)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    # Linear warm-up to the learning rate, then linear decay to zero at the last batch.
    warmup = max(1, round(len(batches) * settings.warmup))
    decay = max(1, len(batches) - warmup)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (len(batches) - step) / decay))
    )
    bf16 = device == "cuda" or _cpu_has_bf16()
    advance = progress(f"fine-tuning on {len(texts)} texts, {settings.epochs} epoch(s)", len(texts) * settings.epochs)
    pad = tokenizer.pad_token_id or 0
    for batch in batches:
        feeds = _pad([rows[i] for i in batch], pad, device)
        labels = torch.tensor([targets[i] for i in batch], device=device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(**feeds)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        advance(len(batch))
    model.to("cpu").eval()


def _length_batches(lengths: Sequence[int], size: int, seed: int, epochs: int) -> list[list[int]]:
    """Batches of similar length, in random order, each text once per epoch.

    Texts are shuffled, cut into pools of 50 batches, sorted by length within a pool and batched, so
    a batch is near-uniform in length while the order the model sees stays random.
    """
    rng = random.Random(seed)  # noqa: S311 (a reproducible order, not a secret)
    batches = []
    for _ in range(epochs):
        order = list(range(len(lengths)))
        rng.shuffle(order)
        pool = size * 50
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(batches)
    return batches


def _pad(rows: Sequence[tuple[list[int], list[int]]], pad: int, device: str) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    types = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (token_ids, type_ids) in enumerate(rows):
        ids[row, : len(token_ids)] = torch.tensor(token_ids)
        types[row, : len(type_ids)] = torch.tensor(type_ids)
        mask[row, : len(token_ids)] = 1
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "token_type_ids": types.to(device),
    }


def _cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: bfloat16 matrix products in hardware (otherwise autocast is slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
