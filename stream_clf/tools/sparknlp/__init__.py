"""Spark NLP, stream-clf's peer: models moved both ways, answers compared, speed measured side by side.

The Spark side runs in an environment of its own (:mod:`stream_clf.tools.sparknlp.environment`) through
a script (:mod:`stream_clf.tools.sparknlp.job`); nothing here imports pyspark.
"""
