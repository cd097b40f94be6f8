"""The worker: decode events, micro-batch, classify and publish them, under either delivery guarantee."""
