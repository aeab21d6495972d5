"""Writes jobs/data/demo_prompts.parquet: scene captions, half of them held out of training.

    python jobs/make_demo_prompts.py
"""

import random

import pyarrow as pa
import pyarrow.parquet as pq

from models.scenes import caption, split

rng = random.Random(0)
heldout, train = split("heldout"), split("train")
chosen = rng.sample(heldout, 32) + rng.sample(train, 32)
pq.write_table(pa.table({
    "id": [f"demo-{i:03d}" for i in range(len(chosen))],
    "prompt": [caption(a) for a in chosen],
    "heldout": [i < 32 for i in range(len(chosen))],
}), "jobs/data/demo_prompts.parquet")
