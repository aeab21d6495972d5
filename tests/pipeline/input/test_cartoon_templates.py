"""Cartoon templates (jobs/cartoon_templates*.yaml): labelled rows whose prompts are the
grammar's own captions, in English and in Chinese, and the ``say`` option behind them."""

import pyarrow as pa
import pytest
import yaml

from models.cartoon import ATTRIBUTES, VALUES
from models.cartoon_text import caption
from pipeline.input.templates import TemplateSource
from pipeline.spec import SpecError, build_spec
from tests.conftest import REPO

JOBS = {"en": "jobs/cartoon_templates.yaml", "zh": "jobs/cartoon_templates_zh.yaml"}


def expand(lang: str, start: int = 0, stop: int | None = None) -> list[dict]:
    with open(f"{REPO}/{JOBS[lang]}", encoding="utf-8") as f:
        spec = build_spec(yaml.safe_load(f))
    source = TemplateSource(spec.input.template)
    assert source.num_rows == 1000
    return pa.concat_tables(list(source.read(start, stop or source.num_rows))).to_pylist()


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_row_is_labelled_and_prompted_as_the_grammar_says(lang):
    rows = expand(lang)
    assert len({r["prompt"] for r in rows}) == 1000
    for row in rows:
        labels = {a: row[a] for a in ATTRIBUTES}
        assert all(labels[a] in VALUES[a] for a in ATTRIBUTES), row
        assert row["prompt"] == caption(labels, lang)
    # every value of every attribute occurs: a labelled set, not a corner of the grammar
    assert all({r[a] for r in rows} == set(VALUES[a]) for a in ATTRIBUTES)


def test_both_languages_label_the_same_characters():
    en, zh = expand("en", 100, 140), expand("zh", 100, 140)
    assert [{a: r[a] for a in ATTRIBUTES} for r in en] == \
        [{a: r[a] for a in ATTRIBUTES} for r in zh]
    assert en[0]["prompt"] != zh[0]["prompt"] and "卡通人物" in zh[0]["prompt"]


@pytest.mark.parametrize("say, message", [
    ({"z": {"1": "one"}}, "input.template.say: 'z' is not a slot"),
    ({"a": {"9": "nine"}}, "input.template.say: '9' is not a value of slot 'a'"),
    ({"a": {"1": "{a}"}}, "one level"),
    ({"a": {"1": "{b}"}, "b": {"2": "{a}"}}, "one level"),
])
def test_say_errors_name_the_field(say, message):
    template = {"text": "{a} {b}", "slots": {"a": ["1"], "b": ["2"]}, "say": say}
    with pytest.raises(SpecError) as e:
        build_spec({"input": {"template": template}})
    assert message in str(e.value)


def test_say_words_may_carry_a_slot_the_text_does_not_name():
    template = {"text": "x{a}", "slots": {"a": ["p", "q"], "b": ["1", "2"]},
                "say": {"a": {"p": " and {b}", "q": ", {b}!"}}}
    source = TemplateSource(build_spec({"input": {"template": template}}).input.template)
    got = pa.concat_tables(list(source.read(0, 4))).to_pylist()
    assert [r["prompt"] for r in got] == ["x and 1", "x and 2", "x, 1!", "x, 2!"]
    assert [(r["a"], r["b"]) for r in got] == [("p", "1"), ("p", "2"), ("q", "1"), ("q", "2")]
