"""Fast tokenizers of each kind the reference models use, trained here on a corpus.

WordPiece (BERT, DistilBERT, MiniLM), byte-level BPE (RoBERTa), SentencePiece-style Unigram
(ALBERT, XLM-R, DeBERTa-v2). Each is laid out as the real model's is: its normalizer, its special
tokens, its post-processor. Used for random-weight checkpoints, whose tokenizers must split text
the way the real ones do (so a text costs as many tokens) without a download.
"""

from collections.abc import Sequence

from tokenizers import (
    SentencePieceUnigramTokenizer,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

__all__ = ["byte_level_bpe", "unigram", "wordpiece"]


def wordpiece(corpus: Sequence[str], vocab_size: int, *, lowercase: bool) -> Tokenizer:
    """BERT's layout: [PAD] [UNK] [CLS] [SEP] [MASK], ``[CLS] text [SEP]``."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))  # noqa: S106 (a token, not a secret)
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(
        corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False)
    )
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tokenizer


def byte_level_bpe(corpus: Sequence[str], vocab_size: int) -> Tokenizer:
    """RoBERTa's layout: <s> <pad> </s> <unk> <mask>, ``<s> text </s>``, bytes as characters."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>"))
    )
    return tokenizer


def unigram(
    corpus: Sequence[str],
    vocab_size: int,
    *,
    lowercase: bool,
    special: Sequence[str],
    template: tuple[str, str],
    unk: str,
) -> Tokenizer:
    """SentencePiece's Unigram model, with the given special tokens and ``first text last`` template."""
    trainer_side = SentencePieceUnigramTokenizer()
    trainer_side.train_from_iterator(
        corpus, vocab_size=vocab_size, special_tokens=list(special), unk_token=unk, show_progress=False
    )
    tokenizer = trainer_side._tokenizer
    steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"'), normalizers.NFKC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    tokenizer.normalizer = normalizers.Sequence(steps)
    first, last = template
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{first} $A {last}",
        pair=f"{first} $A {last} $B:1 {last}:1",
        special_tokens=[(first, tokenizer.token_to_id(first)), (last, tokenizer.token_to_id(last))],
    )
    return tokenizer
