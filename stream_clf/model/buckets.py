"""Length buckets: the sub-batches ONNX Runtime runs one at a time inside a micro-batch.

The rows are sorted by length and cut so that each call is padded only to rows of similar length.
"""

from collections.abc import Sequence

__all__ = ["MAX_PADDING_WASTE", "length_buckets"]

MAX_PADDING_WASTE = 0.1


def length_buckets(
    lengths: Sequence[int], max_rows: int, max_tokens: int, max_waste: float = MAX_PADDING_WASTE
) -> list[list[int]]:
    """Indices of ``lengths``, sorted by length and cut into buckets of similar length.

    A bucket holds at most ``max_rows`` rows and, padded to its longest row, at most ``max_tokens``
    tokens, of which at most ``max_waste`` padding; a row past the token cap makes a bucket by
    itself. On 2 CPU cores, 8 rows did as well as anything tried (4 to 32 rows, 512 to 2,048
    tokens); the token cap is for larger calls (a GPU), whose memory it bounds. The waste cap halved
    the padding of IMDB-like micro-batches (7.9% to 3.9%) and ran 3% faster; tighter caps cost
    more in calls than they saved.
    """
    if max_rows < 1 or max_tokens < 1:
        raise ValueError("max_rows and max_tokens must be >= 1")
    buckets: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        length = lengths[index]
        if current:
            padded = (len(current) + 1) * length
            if len(current) >= max_rows or padded > max_tokens or 1 - (real + length) / padded > max_waste:
                buckets.append(current)
                current, real = [], 0
        current.append(index)
        real += length
    if current:
        buckets.append(current)
    return buckets
