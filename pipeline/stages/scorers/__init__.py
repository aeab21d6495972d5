"""The scorer registry: each quality scorer is one module here, registered once below.

``quality.scorers: [phash, scene]`` in a job spec picks them; each adds typed columns to
the metadata Parquet (and so to the WebDataset JSON and the HF-Parquet columns).
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.stages.scorers.base import Scorer
from pipeline.stages.scorers.clip import ClipScorer
from pipeline.stages.scorers.phash import PhashScorer
from pipeline.stages.scorers.safety import SafetyScorer
from pipeline.stages.scorers.scene import SceneScorer

SCORERS: dict[str, type[Scorer]] = {
    s.name: s for s in (PhashScorer, SceneScorer, ClipScorer, SafetyScorer)}
# with quality.accept: which draw was kept, and whether it passed; with keep_rejected also
# whether the row is the sample's image (True) or a stored rejected draw (False)
ACCEPT_COLUMNS = {"attempt": pa.int32(), "accepted": pa.bool_(), "kept": pa.bool_()}


def scorer_names() -> list[str]:
    return list(SCORERS)


def columns_of(names: list[str]) -> dict[str, pa.DataType]:
    """The columns the scorers ``names`` add, in order, with their Arrow types."""
    return {c: t for name in names for c, t in SCORERS[name].columns.items()}


def numeric_columns(names: list[str]) -> dict[str, pa.DataType]:
    """The columns an accept expression may compare: numbers and flags."""
    return {c: t for c, t in columns_of(names).items()
            if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)}


def make_scorers(quality, device: str = "cpu") -> list[Scorer]:
    """The job's scorers, loaded (model scorers onto ``device``)."""
    return [SCORERS[name](quality, device) for name in quality.scorers]
