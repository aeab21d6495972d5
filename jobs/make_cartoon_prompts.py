"""Writes jobs/data/cartoon_prompts.parquet: cartoon prompts in English and Chinese.

    python jobs/make_cartoon_prompts.py

The founding prompt 卡通风格的人物 and its English twin (rows 0 and 1), free-form and partial
prompts, and 24 held-out characters (never seen in training) in both languages.
"""

import random

import pyarrow as pa
import pyarrow.parquet as pq

from models.cartoon import split
from models.cartoon_text import FOUNDING_PROMPT, FREE_FORM, caption

rng = random.Random(0)
chosen = rng.sample(split("heldout"), 24)
# the founding prompt beside its English twin first: the report's per-prompt rows show them
rows = [(FOUNDING_PROMPT, "zh", "free"), ("a cartoon-style character", "en", "free"),
        (FREE_FORM["zh"][1], "zh", "free"), (FREE_FORM["en"][0], "en", "free")]
rows += [("a cartoon character with spiky blue hair", "en", "partial"),
         ("一个惊讶的卡通人物，戴着帽子", "zh", "partial")]
rows += [(caption(a, lang), lang, "heldout") for a in chosen for lang in ("en", "zh")]
pq.write_table(pa.table({
    "id": [f"cartoon-{i:03d}" for i in range(len(rows))],
    "prompt": [r[0] for r in rows],
    "lang": [r[1] for r in rows],
    "kind": [r[2] for r in rows],
}), "jobs/data/cartoon_prompts.parquet")
