"""The model runtime the worker serves with: bundles, the classifier, long-text cuts and windows, buckets,
the catalog of built models, and confidence bounds.

Nothing here imports Kafka (an import-linter contract): a model is loaded and run without a broker.
Building, exporting, quantizing and fine-tuning models are tools (``stream_clf.tools.build``).
"""
