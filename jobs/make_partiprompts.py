"""Writes a Parquet of N prompts from PartiPrompts (rows repeated under distinct ids).

    python jobs/make_partiprompts.py 10000 out/partiprompts_10k.parquet
"""

import csv
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
TSV = os.environ.get("PARTIPROMPTS", os.path.join(HERE, "..", "..", "shared", "data",
                                                  "PartiPrompts.tsv"))


def main(n: int, out: str) -> None:
    with open(TSV, newline="", encoding="utf-8") as f:
        # csv would turn nothing into numbers, but keep every field a string explicitly
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    picked = [rows[i % len(rows)] for i in range(n)]
    table = pa.table({
        "id": [f"parti-{i:07d}" for i in range(n)],
        "prompt": pa.array([r["Prompt"] for r in picked], pa.string()),
        "category": [r["Category"] for r in picked],
        "challenge": [r["Challenge"] for r in picked],
    })
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    pq.write_table(table, out, row_group_size=2048)
    print(f"wrote {n} prompts ({len(rows)} unique) to {out}")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
