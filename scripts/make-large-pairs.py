#!/usr/bin/env python3
"""Writes a large JSONL of labeled (query, document) pairs for the larger-than-memory benchmark.

Usage: make-large-pairs.py ROWS OUT.jsonl [--seed N]

Queries are ~8 words and documents ~60 words drawn from a fixed vocabulary (2,000,000 rows come
to about 0.95 GB), labels alternate 1/0 at random: an MS MARCO-shaped file without downloading
one. Deterministic for a given seed.
"""
import argparse
import json
import random

parser = argparse.ArgumentParser()
parser.add_argument("rows", type=int)
parser.add_argument("out")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

rng = random.Random(args.seed)
syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gri", "fen", "ur"]
vocabulary = [
    "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(20000)
]

with open(args.out, "w", encoding="utf-8") as out:
    for row in range(args.rows):
        query = " ".join(rng.choices(vocabulary, k=rng.randint(6, 10)))
        document = " ".join(rng.choices(vocabulary, k=rng.randint(45, 75)))
        label = rng.randint(0, 1)
        out.write(json.dumps({"query": query, "document": document, "label": label}) + "\n")
