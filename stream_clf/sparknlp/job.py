"""Spark NLP jobs, run by stream-clf in Spark NLP's own environment (``python job.py SPEC.json``).

This file is a script for that environment (pyspark, spark-nlp): it imports nothing of stream-clf,
and stream-clf never imports it. SPEC is a JSON object: ``command``, ``jars`` (the classpath),
``output`` (where the JSON answer goes) and the command's own fields.

- ``classify``: ``models`` (each ``name``, ``folder``, ``annotator``, ``case_sensitive``,
  ``max_length``, ``batch_size``, optionally ``save``: where to write the loaded model with Spark
  NLP's own ``write().save()``), ``texts``, and ``tokenizers``: for each, the pipeline's tokenizer,
  ``default`` (Spark NLP's ``Tokenizer``, as the model cards write the pipeline) or a regular
  expression that a ``RegexTokenizer`` splits on. Answer: for each model and tokenizer, each text's
  label and scores, and the seconds the transform took.
"""

import json
import sys
import time


def main() -> None:
    spec = json.loads(open(sys.argv[1], encoding="utf-8").read())  # noqa: SIM115 (a one-shot script)
    spark = _session(spec["jars"], spec.get("cores", 2))
    spark.sparkContext.setLogLevel("ERROR")
    try:
        answer = {"classify": classify}[spec["command"]](spark, spec)
    finally:
        spark.stop()
    with open(spec["output"], "w", encoding="utf-8") as sink:
        json.dump(answer, sink)


def _session(jars: list[str], cores: int):
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("stream-clf-spark-nlp")
        .config("spark.jars", ",".join(jars))
        .config("spark.driver.memory", "4g")
        .config("spark.ui.enabled", "false")
        # Every loadSavedModel adds a file named model.onnx to the session: let a later one replace it.
        .config("spark.files.overwrite", "true")
        .config("spark.sql.shuffle.partitions", str(cores))
        .getOrCreate()
    )


def _classifier(spark, model: dict):
    from sparknlp import annotator

    annotator_class = getattr(annotator, model["annotator"])
    return (
        annotator_class.loadSavedModel(model["folder"], spark)
        .setInputCols(["document", "token"])
        .setOutputCol("class")
        .setCaseSensitive(model["case_sensitive"])
        .setMaxSentenceLength(model["max_length"])
        .setBatchSize(model.get("batch_size", 8))
    )


def _tokenizer(pattern: str):
    from sparknlp.annotator import RegexTokenizer, Tokenizer

    if pattern == "default":
        return Tokenizer().setInputCols(["document"]).setOutputCol("token")
    return RegexTokenizer().setInputCols(["document"]).setOutputCol("token").setPattern(pattern).setToLowercase(False)


def classify(spark, spec: dict) -> dict:
    from pyspark.ml import Pipeline
    from sparknlp.base import DocumentAssembler

    texts = spec["texts"]
    frame = spark.createDataFrame([(i, text) for i, text in enumerate(texts)], ["id", "text"]).repartition(
        spec.get("cores", 2)
    )
    assembler = DocumentAssembler().setInputCol("text").setOutputCol("document")
    answer: dict = {}
    for model in spec["models"]:
        classifier = _classifier(spark, model)
        if model.get("save"):
            classifier.write().overwrite().save(model["save"])
        answer[model["name"]] = {}
        for name, pattern in spec["tokenizers"].items():
            pipeline = Pipeline(stages=[assembler, _tokenizer(pattern), classifier]).fit(frame)
            started = time.perf_counter()
            rows = pipeline.transform(frame).select("id", "class.result", "class.metadata").collect()
            seconds = time.perf_counter() - started
            by_id = {}
            for row in rows:
                metadata = row["metadata"][0] if row["metadata"] else {}
                scores = {label: float(value) for label, value in metadata.items() if label != "sentence"}
                by_id[row["id"]] = {"label": row["result"][0] if row["result"] else None, "scores": scores}
            answer[model["name"]][name] = {"results": [by_id[i] for i in range(len(texts))], "seconds": seconds}
    return answer


if __name__ == "__main__":
    main()
