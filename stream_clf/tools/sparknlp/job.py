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
- ``stream``: Structured Streaming from Kafka to Kafka with one model (``model``, as above, and
  ``tokenizer``): JSON events ``{"id", "text"}`` read from ``input`` on ``bootstrap`` become
  ``{"id", "label", "scores"}`` results on ``output_topic``, keyed like their events, micro-batch by
  micro-batch (``max_offsets_per_trigger`` events at most; ``trigger_ms`` apart, 0: back to back).
  Once the query runs, the JVM's pid is written to ``ready``; the job stops when the file ``stop``
  appears. Answer: the micro-batches' progress (rows and durations).
"""

import json
import sys
import time


def main() -> None:
    spec = json.loads(open(sys.argv[1], encoding="utf-8").read())  # noqa: SIM115 (a one-shot script)
    spark = _session(spec["jars"], spec.get("cores", 2))
    spark.sparkContext.setLogLevel("ERROR")
    try:
        answer = {"classify": classify, "stream": stream}[spec["command"]](spark, spec)
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


def stream(spark, spec: dict) -> dict:
    import os
    import time

    from pyspark.ml import Pipeline
    from pyspark.sql import functions as F  # noqa: N812 (pyspark's convention)
    from pyspark.sql.types import StringType, StructField, StructType
    from sparknlp.base import DocumentAssembler

    kafka = {"kafka.bootstrap.servers": spec["bootstrap"]}
    events = (
        spark.readStream.format("kafka")
        .options(**kafka)
        .option("subscribe", spec["input_topic"])
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", str(spec["max_offsets_per_trigger"]))
        .load()
    )
    schema = StructType([StructField("id", StringType()), StructField("text", StringType())])
    parsed = events.select("key", F.from_json(F.col("value").cast("string"), schema).alias("event")).select(
        "key", "event.id", "event.text"
    )
    assembler = DocumentAssembler().setInputCol("text").setOutputCol("document")
    pipeline = Pipeline(stages=[assembler, _tokenizer(spec["tokenizer"]), _classifier(spark, spec["model"])])
    model = pipeline.fit(spark.createDataFrame([("", "")], ["id", "text"]))
    labelled = model.transform(parsed).select(
        "key",
        F.to_json(
            F.struct(
                F.col("id"),
                F.col("class.result")[0].alias("label"),
                F.col("class.metadata")[0].alias("scores"),
            )
        ).alias("value"),
    )
    writer = (
        labelled.writeStream.format("kafka")
        .options(**kafka)
        .option("topic", spec["output_topic"])
        .option("checkpointLocation", spec["checkpoint"])
    )
    if spec["trigger_ms"]:
        writer = writer.trigger(processingTime=f"{spec['trigger_ms']} milliseconds")
    query = writer.start()
    jvm_pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    with open(spec["ready"], "w", encoding="utf-8") as ready:
        ready.write(str(jvm_pid))
    while not os.path.exists(spec["stop"]):
        if query.exception() is not None:
            raise RuntimeError(str(query.exception()))
        time.sleep(0.2)
    progress = [
        {"rows": batch["numInputRows"], "ms": batch["durationMs"].get("triggerExecution", 0)}
        for batch in query.recentProgress
    ]
    query.stop()
    return {"batches": progress}


if __name__ == "__main__":
    main()
