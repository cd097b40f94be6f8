"""Models: bundles, the classifier, long-text windows, export, int8, and the models stream-clf builds.

Nothing here imports Kafka: a model is served, exported and scored without a broker.
"""
