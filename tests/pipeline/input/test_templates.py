"""Prompt templates: validation, cartesian/sampled rows, constraints, weights, determinism."""

import pickle
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from models.scenes import COLOURS, POSITIONS, SHAPES, SIZES, all_combinations, caption
from pipeline.input.resolve import resolve_input
from pipeline.input.shards import plan_shards
from pipeline.input.sources import InputError
from pipeline.input.templates import Permutation, TemplateSource
from pipeline.spec import InputSpec, SpecError, build_spec

TEXT = "a {size} {colour} {shape} {position} on a {background} background"
SLOTS = {"size": SIZES, "colour": COLOURS, "shape": SHAPES, "position": list(POSITIONS),
         "background": COLOURS}
SCENES = {"text": TEXT, "slots": SLOTS, "distinct": [["colour", "background"]]}


def source(**template) -> TemplateSource:
    return TemplateSource(InputSpec(template=template).template)


def rows(src: TemplateSource, start: int = 0, stop: int | None = None) -> list[dict]:
    stop = src.num_rows if stop is None else stop
    return pa.concat_tables(list(src.read(start, stop))).to_pylist()


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 4097])
def test_permutation_is_a_bijection(n):
    out = Permutation(n, seed=5)(np.arange(n, dtype=np.uint64))
    assert sorted(out.tolist()) == list(range(n))


def test_cartesian_gives_every_valid_combination_once_in_order():
    src = source(**SCENES)
    got = rows(src)
    assert src.num_rows == len(got) == 1680
    assert [r["prompt"] for r in got] == [caption(a) for a in all_combinations()]
    assert got[0] == {"prompt": caption(got[0]), "size": "small", "colour": "red",
                      "shape": "circle", "position": "on the left", "background": "green"}
    assert rows(src, 1000, 1013) == got[1000:1013]  # any range, computed on its own


def test_sampling_without_duplicates_is_seeded_and_range_independent():
    src = source(**SCENES, mode="sample", count=1500, seed=3)
    got = rows(src)
    assert len({r["prompt"] for r in got}) == 1500
    assert all(r["colour"] != r["background"] for r in got)
    assert rows(src, 777, 800) == got[777:800]
    again = source(**SCENES, mode="sample", count=1500, seed=3)
    assert rows(again, 0, 50) == got[:50]
    other = source(**SCENES, mode="sample", count=1500, seed=4)
    assert rows(other, 0, 50) != got[:50]
    with pytest.raises(InputError, match="only 1680 distinct prompts"):
        source(**SCENES, mode="sample", count=1681)


def test_weights_shape_frequencies_with_and_without_dedupe():
    weighted = dict(SLOTS, colour={"red": 6, "blue": 2, "green": 1, "white": 1})
    spec = dict(SCENES, slots=weighted, mode="sample", seed=1)
    dedup = Counter(r["colour"] for r in rows(source(**spec, count=300)))
    assert len(dedup) == 4 and dedup["red"] > 2 * dedup["blue"] > 2 * dedup["green"] * 0.8
    everything = rows(source(**spec, count=600))  # all 600 valid combinations, each once
    assert len({r["prompt"] for r in everything}) == 600
    iid = rows(source(**spec, count=20000, dedupe=False))
    freq = Counter(r["colour"] for r in iid)
    assert abs(freq["red"] / 20000 - 0.6) < 0.02 and abs(freq["blue"] / 20000 - 0.2) < 0.02
    assert len({r["prompt"] for r in iid}) < 20000  # duplicates allowed
    assert all(r["colour"] != r["background"] for r in iid)


def test_exclude_rules():
    src = source(text="{a}-{b}", slots={"a": ["x", "y"], "b": ["1", "2", "3"]},
                 exclude=[{"a": "x", "b": ["1", "3"]}])
    assert [r["prompt"] for r in rows(src)] == ["x-2", "y-1", "y-2", "y-3"]


def test_a_million_prompts_never_materialise_on_the_driver():
    slots = {f"s{k}": [f"v{k}-{i}" for i in range(100)] for k in range(5)}
    text = " ".join(f"{{s{k}}}" for k in range(5))
    t = time.perf_counter()
    inputs = resolve_input(InputSpec(template={
        "text": text, "slots": slots, "mode": "sample", "count": 1_000_000, "seed": 9,
        "exclude": [{"s0": ["v0-1", "v0-2"]}]}), {})
    shards = list(plan_shards(inputs, 10_000))
    assert time.perf_counter() - t < 10 and inputs.num_rows == 1_000_000
    assert len(shards) == 100 and len(pickle.dumps(shards[50])) < 100_000
    middle = pa.concat_tables(list(shards[50].segments[0].read({})))
    assert middle.num_rows == 10_000 and middle.column_names == ["prompt", *slots]
    assert not set(middle.column("s0").to_pylist()) & {"v0-1", "v0-2"}
    src = inputs.files[0]
    edge = src.index[30]  # where one index block ends and the next begins
    across = rows(src, edge - 10, edge + 10)
    assert across == rows(src, edge - 10, edge) + rows(src, edge, edge + 10)
    assert across == rows(src, edge - 300, edge + 10)[290:]
    assert len({r["prompt"] for r in middle.to_pylist()}) == 10_000


def test_signature_covers_the_template():
    def sig(**change):
        return resolve_input(InputSpec(template={**SCENES, **change}), {}).signature()
    assert sig() == sig()
    assert sig() != sig(text=TEXT + ".")
    assert sig() != sig(distinct=[])


@pytest.mark.parametrize("template, message", [
    ({"text": "{a} {b}", "slots": {"a": ["1"], "c": ["2"]}},
     "input.template.slots: text uses ['a', 'b']; missing ['b'], unused ['c']"),
    ({"text": "{a}", "slots": {"a": ["1", "1"]}}, "input.template.slots.a: repeats a value"),
    ({"text": "{a}", "slots": {"a": {"1": 2}}}, "input.template.slots: weights (a) need"),
    ({"text": "{a}", "slots": {"a": ["1"]}, "mode": "sample"},
     "input.template.count: required when mode is 'sample'"),
    ({"text": "{a}", "slots": {"a": ["1"]}, "count": 3}, "input.template.count: cartesian"),
    ({"text": "{a!r}", "slots": {"a": ["1"]}}, "input.template.text: {a} must be a plain"),
    ({"text": "{a}", "slots": {"a": ["1"]}, "exclude": [{"a": "2"}]},
     "input.template.exclude: '2' is not a value of slot 'a'"),
    ({"text": "{a}", "slots": {"a": ["1"]}, "distinct": [["a", "z"]]},
     "input.template.distinct"),
    ({"text": "{a}", "slots": {"a": ["1"]}, "mood": 1}, "input.template.mood: unknown key"),
])
def test_template_errors_name_the_dotted_field(template, message):
    with pytest.raises(SpecError) as e:
        build_spec({"input": {"template": template}})
    assert message in str(e.value)


def test_path_and_template_are_exclusive():
    template = {"text": "{a}", "slots": {"a": ["1"]}}
    with pytest.raises(SpecError, match="give either input.path or input.template"):
        build_spec({"input": {"path": "p.parquet", "template": template}})
    with pytest.raises(SpecError, match="input.id_column: not used with input.template"):
        build_spec({"input": {"template": template, "id_column": "id"}})
    spec = build_spec({"input": {"template": template}},
                      ["input.template.text={a} and {a}", "input.template.slots.a=[1, 2]"])
    assert spec.input.template.text == "{a} and {a}"
    assert spec.input.template.slots["a"] == ["1", "2"]  # YAML numbers become text
