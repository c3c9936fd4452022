"""Reference point for bench/ingest.py: a plain per-message Faust agent doing the same validation.

Not part of the product; it shows what the batched ingest path saves.
"""

import os
import time

import faust

from streams.validation import Invalid, Validator

N = int(os.environ["BENCH_EVENTS"])
app = faust.App(os.environ["BENCH_APP_ID"], broker=os.environ["STREAMREC_KAFKA_URL"], store="memory://",
                web_enabled=False, broker_session_timeout=6, broker_rebalance_timeout=6,
                broker_heartbeat_interval=1)
topic = app.topic(os.environ["BENCH_TOPIC"], value_serializer="raw")
validator = Validator()
seen = {"n": 0, "first": None}


@app.agent(topic)
async def validate(stream):
    async for values in stream.take(5000, within=0.2):
        if seen["first"] is None:
            seen["first"] = time.perf_counter()
            print(f"BENCH first {time.time()}", flush=True)
        for value in values:
            try:
                validator.interaction(value)
            except Invalid:
                pass
        seen["n"] += len(values)
        if seen["n"] >= N:
            print(f"BENCH done {seen['n']} {time.perf_counter() - seen['first']:.4f}", flush=True)
