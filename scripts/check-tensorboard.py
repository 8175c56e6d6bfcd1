#!/usr/bin/env python3
"""Reads a crosstrain run's TensorBoard event files with TensorBoard's own loader (pip
`tensorboard`) and compares every scalar with the run's metrics.jsonl. Usage:

    python scripts/check-tensorboard.py OUTPUT_DIR   # a run with report_to = ["tensorboard"]
"""
import sys, json
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
out = sys.argv[1]
acc = EventAccumulator(out + "/runs"); acc.Reload()
tags = acc.Tags()["scalars"]
tb = {(t, e.step): e.value for t in tags for e in acc.Scalars(t)}
jl = {}
for line in open(out + "/metrics.jsonl"):
    e = json.loads(line)
    for k, tag in [("loss", "train/loss"), ("learning_rate", "train/learning_rate"), ("grad_norm", "train/grad_norm")]:
        if k in e: jl[(tag, e["step"])] = e[k]
    for k, v in e.get("metrics", {}).items(): jl[("eval/" + k[5:], e["step"])] = v
    jl[("train/epoch", e["step"])] = e["epoch"]
worst = max(abs(tb[k] - v) / max(abs(v), 1e-12) for k, v in jl.items())
print(f"tensorboard {len(tags)} tags, {len(tb)} points; metrics.jsonl {len(jl)} points; same keys: {set(tb) == set(jl)}; worst rel diff {worst:.1e}")
