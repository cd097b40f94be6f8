"""Everything beside the serving core: benchmarks, Spark NLP, model building, evaluation, the demo, replay,
produce and tail, the local broker and the jar fetcher.

Tools may import the core; the core never imports a tool (an import-linter contract), so what
``stream-clf worker`` loads is the core alone.
"""
