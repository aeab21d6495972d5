"""Quality scorers and best-of-n in-process: the columns they add to the metadata Parquet
and the WebDataset JSON, the accept grammar, and redraws that land on the same images
whatever the shard size, batch size or number of workers."""

import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models import scenes
from pipeline.input.shards import plan_shards
from pipeline.output.storage import OutputFolder
from pipeline.runner import make_plan
from pipeline.spec import SpecError, build_spec
from pipeline.stages.accept import AcceptError, parse_accept
from pipeline.stages.quality import attempt_seed
from pipeline.stages.scorers.phash import phash_hex
from pipeline.stages.scorers.scene import SceneScorer, parse_scene
from pipeline.stages.worker import ShardWorker
from tests.conftest import write_prompts
from tests.pipeline.stages.scene_model import SceneModel

SCENES = [scenes.caption(a) for a in scenes.all_combinations()[::97]][:12]
PROMPTS = SCENES + ["a photo of a cat", "an astronaut riding a horse"]


def run_job_in_process(tmp_path, quality, shard_size=100, batch_size=4, workers=1,
                       fmt="files", images_per_prompt=1, model=None, name="out"):
    """Every shard through ShardWorkers in this process (shards dealt round-robin)."""
    src = write_prompts(tmp_path / "p.parquet", PROMPTS)
    spec = build_spec({"input": {"path": src}, "model": {"family": "null"},
                       "generation": {"images_per_prompt": images_per_prompt},
                       "output": {"path": str(tmp_path / name), "format": fmt},
                       "runtime": {"batch_size": batch_size, "shard_size": shard_size},
                       "quality": quality})
    plan = make_plan(spec)
    model = model or SceneModel()
    folder = OutputFolder(spec.output.path)
    pool = [ShardWorker(spec, model, plan.keys, folder, True) for _ in range(workers)]
    markers = [pool[i % workers].run(shard)
               for i, shard in enumerate(plan_shards(plan.inputs, shard_size))]
    rows = [r for n in sorted(p.name for p in (tmp_path / name).glob("?????.parquet"))
            for r in pq.read_table(tmp_path / name / n).to_pylist()]
    return markers, rows, model


def test_scene_prompts_parse_and_others_do_not():
    attrs = scenes.all_combinations()[5]
    assert parse_scene(scenes.caption(attrs)) == attrs
    assert parse_scene("  A Large RED square on the left on an orange background. ") == {
        "size": "large", "colour": "red", "shape": "square", "position": "on the left",
        "background": "orange"}
    assert parse_scene("a red square at the top on a grey background, take 1") is None
    assert parse_scene(None) is None


def test_scene_scorer_names_the_failed_attributes():
    attrs = {"size": "large", "colour": "red", "shape": "square", "position": "on the left",
             "background": "blue"}
    right = scenes.render(attrs)
    wrong = scenes.render({**attrs, "colour": "green", "shape": "circle"})
    scorer = SceneScorer(None)
    assert scorer.score(right, scenes.caption(attrs)) == {"scene_match": 1.0, "scene_failed": []}
    got = scorer.score(wrong, scenes.caption(attrs))
    assert got["scene_match"] == pytest.approx(0.6) and got["scene_failed"] == ["colour", "shape"]
    assert scorer.score(right, "a photo of a cat") == {"scene_match": None, "scene_failed": None}


def test_scorer_columns_reach_parquet_and_webdataset_json(tmp_path):
    _, rows, _ = run_job_in_process(tmp_path, {"scorers": ["phash", "scene"]},
                                    fmt="webdataset")
    model = SceneModel()
    for r in rows:
        pixels = model._draw(r["prompt"], r["seed"])
        assert r["phash"] == phash_hex(pixels) and len(r["phash"]) == 16
        wanted = SceneScorer(None).score(pixels, r["prompt"])
        assert r["scene_failed"] == wanted["scene_failed"]
        assert r["scene_match"] == pytest.approx(wanted["scene_match"])
    by_prompt = {r["prompt"]: r for r in rows}
    assert by_prompt["a photo of a cat"]["scene_match"] is None
    matches = [r["scene_match"] for r in rows if r["scene_match"] is not None]
    assert len(matches) == len(SCENES) and 0 < sum(m == 1 for m in matches) < len(matches)
    assert any(r["scene_failed"] == ["colour"] for r in rows)  # the model's planted mistake
    schema = pq.read_schema(tmp_path / "out" / "00000.parquet")
    assert schema.field("scene_match").type == pa.float32()
    assert schema.field("scene_failed").type.value_type == pa.string()
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        docs = [json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json")]
    assert len(docs) == len(PROMPTS)
    assert all({"phash", "scene_match", "scene_failed"} <= set(d) for d in docs)
    assert {d["key"]: d["phash"] for d in docs} == {r["key"]: r["phash"] for r in rows}


def test_images_stay_byte_identical_with_scorers_on(tmp_path):
    _, plain, _ = run_job_in_process(tmp_path, {}, name="plain")
    _, scored, _ = run_job_in_process(tmp_path, {"scorers": ["phash", "scene"]}, name="scored")
    assert [r["sha256"] for r in plain] == [r["sha256"] for r in scored]
    assert "phash" not in plain[0] and "phash" in scored[0]


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "scene_match",
                                  "scene_match > phash", "clip_score > 0.2",
                                  "scene_match.real > 1", "scene_match >= 'a'", "1 < 2 < (3"])
def test_accept_rejects_anything_but_comparisons_of_known_columns(text):
    with pytest.raises(AcceptError):
        parse_accept(text, {"scene_match": None})


def test_accept_evaluates_and_ranks():
    accept = parse_accept("scene_match >= 0.8 and not scene_match > 0.99 or scene_match < 0",
                          {"scene_match": None})
    assert [accept({"scene_match": v}) for v in (0.6, 0.8, 1.0, -1)] == [False, True, False, True]
    assert accept({"scene_match": None})  # the signal does not apply to this prompt
    rank = parse_accept("scene_match == 1", {"scene_match": None}).rank
    assert rank({"scene_match": 1.0}) > rank({"scene_match": 0.8}) > rank({"scene_match": 0.2})


def test_spec_checks_the_quality_section():
    base = {"input": {"path": "x.parquet"}}
    with pytest.raises(SpecError, match="quality.scorers"):
        build_spec({**base, "quality": {"scorers": ["phash", "sharpness"]}})
    with pytest.raises(SpecError, match="not a column"):
        build_spec({**base, "quality": {"scorers": ["phash"], "accept": "scene_match == 1"}})
    with pytest.raises(SpecError, match="clip_model"):
        build_spec({**base, "quality": {"scorers": ["clip"]}})
    plain = build_spec(base)
    assert plain.quality.dedup is False  # no scorers: outputs stay as they were
    assert build_spec({**base, "quality": {"scorers": ["scene"]}}).quality.dedup is True
    assert plain.fingerprint() == build_spec({**base, "quality": {"dedup_threshold": 6}}) \
        .fingerprint()  # dedup runs after the shards: it changes none of them
    assert plain.fingerprint() != build_spec({**base, "quality": {"scorers": ["phash"]}}) \
        .fingerprint()


BEST_OF = {"scorers": ["phash", "scene"], "accept": "scene_match == 1", "max_attempts": 4}


def test_best_of_n_redraws_rejected_samples_and_keeps_the_best(tmp_path):
    markers, rows, model = run_job_in_process(tmp_path, BEST_OF)
    scene_rows = [r for r in rows if r["scene_match"] is not None]
    redrawn = [r for r in scene_rows if r["attempt"] > 0]
    assert redrawn, "the model's planted mistakes should need redraws"
    for r in scene_rows:  # the model draws a scene right when seed % 3 == 0
        assert r["accepted"] == (r["scene_match"] == 1)
        assert r["seed"] % 3 == 0 if r["accepted"] else r["attempt"] == 0
    accepted = sum(r["accepted"] for r in rows)
    q = markers[0]["quality"]
    assert q["accepted"] == accepted and q["accepted"] + q["not_accepted"] == len(PROMPTS)
    assert q["draws"] == len(model.seeds_drawn) > len(PROMPTS)
    assert (tmp_path / "out" / rows[0]["file"]).exists()
    assert len(list((tmp_path / "out" / "00000").iterdir())) == len(PROMPTS)  # no rejects kept


def test_best_of_n_is_the_same_across_shard_sizes_batches_and_workers(tmp_path):
    _, one, _ = run_job_in_process(tmp_path, BEST_OF, name="a")
    _, many, _ = run_job_in_process(tmp_path, BEST_OF, shard_size=3, batch_size=2, workers=2,
                                    name="b")
    pick = ("prompt", "seed", "attempt", "accepted", "sha256", "phash", "scene_match")
    assert [{k: r[k] for k in pick} for r in one] == [{k: r[k] for k in pick} for r in many]


def test_attempt_seeds_derive_from_the_sample_seed_alone():
    assert attempt_seed(1234, 0) == 1234
    assert len({attempt_seed(1234, a) for a in range(8)}) == 8
    assert attempt_seed(1234, 3) == attempt_seed(1234, 3) != attempt_seed(1235, 3)


def test_variety_column_and_stats_for_several_images_per_prompt(tmp_path):
    markers, rows, _ = run_job_in_process(tmp_path, {"scorers": ["phash"]},
                                          images_per_prompt=3)
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], []).append(r)
    for group in by_prompt.values():
        h = [int(r["phash"], 16) for r in group]
        pairs = [(h[i] ^ h[j]).bit_count() for i in range(3) for j in range(i + 1, 3)]
        assert [r["variety"] for r in group] == pytest.approx([np.mean(pairs)] * 3)
    q = markers[0]["quality"]
    assert q["variety_prompts"] == len(PROMPTS)
    assert q["variety_sum"] == pytest.approx(sum(group[0]["variety"]
                                                 for group in by_prompt.values()), abs=1e-3)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from tests.pipeline.stages.tiny_clip import build_tiny_clip

    return build_tiny_clip(str(tmp_path_factory.mktemp("clip")))


def _cosine(folder, pixels, prompt):
    """The cosine computed straight with transformers, as a reference."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPProcessor.from_pretrained(folder)
    inputs = processor(text=[prompt], images=[pixels], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    return torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()


def test_clip_scorer_writes_the_raw_cosine_and_the_model(tmp_path, tiny_clip):
    quality = {"scorers": ["clip"], "clip_model": tiny_clip, "accept": "clip_score > -2"}
    _, rows, _ = run_job_in_process(tmp_path, quality, batch_size=3)
    model = SceneModel()
    scores = [r["clip_score"] for r in rows]
    assert all(-1 <= s <= 1 for s in scores) and len(set(scores)) > 1
    assert {r["clip_model"] for r in rows} == {tiny_clip}
    for r in rows[:3]:
        pixels = model._draw(r["prompt"], r["seed"])
        assert r["clip_score"] == pytest.approx(_cosine(tiny_clip, pixels, r["prompt"]), abs=1e-4)
    assert all(r["accepted"] and r["attempt"] == 0 for r in rows)
    schema = pq.read_schema(tmp_path / "out" / "00000.parquet")
    assert schema.field("clip_score").type == pa.float32()


class FlakyScenes(SceneModel):
    """Draws a black frame (a failed sample) for the first prompt until ``healed``."""

    healed = False

    def _draw(self, prompt, seed):
        if not self.healed and prompt == PROMPTS[0]:
            return np.zeros((64, 64, 3), np.uint8)
        return super()._draw(prompt, seed)


def retry_healed(spec, model: FlakyScenes, shard_size: int = 5) -> None:
    """``--retry-failed`` of a committed output, in this process: only shard 0 (the first
    prompt's black frame) is picked, and the healed model redraws it."""
    from pipeline.output.retry import retry_shards

    plan = make_plan(spec)
    folder = OutputFolder(spec.output.path, spec.storage_options)
    shards = list(plan_shards(plan.inputs, shard_size))
    markers = {plan.keys.shard_name(s.id): folder.read_json(f"{plan.keys.shard_name(s.id)}"
                                                            "_stats.json") for s in shards}
    redo = retry_shards(folder, shards, markers, plan.keys.shard_name)
    assert [s.id for s in redo] == [0]
    model.healed = True
    ShardWorker(spec, model, plan.keys, folder, True).run(redo[0])


def test_retry_failed_keeps_the_scores_and_kept_draws_of_carried_samples(tmp_path):
    model = FlakyScenes()
    _, before, _ = run_job_in_process(tmp_path, BEST_OF, shard_size=5, model=model)
    assert before[0]["status"] == "error" and before[0]["phash"] is None
    src = write_prompts(tmp_path / "p.parquet", PROMPTS)
    retry_healed(build_spec({"input": {"path": src}, "model": {"family": "null"},
                             "output": {"path": str(tmp_path / "out")},
                             "runtime": {"batch_size": 4, "shard_size": 5},
                             "quality": BEST_OF}), model)
    after = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    assert after[0]["status"] == "success" and len(after[0]["phash"]) == 16
    pick = ("seed", "attempt", "accepted", "sha256", "phash", "scene_match", "scene_failed")
    assert [{k: r[k] for k in pick} for r in after[1:]] == \
        [{k: r[k] for k in pick} for r in before[1:5]]


def test_vendi_score_of_each_prompts_clip_embeddings(tmp_path, tiny_clip):
    quality = {"scorers": ["clip", "phash"], "clip_model": tiny_clip}
    still = SceneModel(still=("small", "large"))  # every seed draws the same image
    markers, rows, _ = run_job_in_process(tmp_path, quality, images_per_prompt=3, model=still,
                                          name="still")
    scenes_rows = [r for r in rows if r["prompt"] in SCENES]
    assert all(r["vendi"] == pytest.approx(1.0, abs=1e-3) for r in scenes_rows)  # collapsed
    noise = [r for r in rows if r["prompt"] not in SCENES]  # seeded noise: three different
    assert all(1.0 < r["vendi"] <= 3.0 + 1e-6 for r in noise)
    assert markers[0]["quality"]["vendi_prompts"] == len(PROMPTS)
    from pipeline.report.collect import RunData
    from pipeline.report.quality import collect_quality
    from pipeline.report.quality_render import quality_sections

    q = collect_quality(OutputFolder(str(tmp_path / "still")), RunData({}, {}, markers))
    assert q.variety[0][1] == 0 and q.variety[0][2] == pytest.approx(1.0, abs=1e-3)
    assert q.variety[-1][2] > 1.0  # the noise prompts come last
    assert "<th>Vendi</th>" in "".join(quality_sections(q))


def test_safety_scorer_flags_and_scores_but_never_blacks_out(tmp_path):
    from tests.pipeline.stages.tiny_clip import build_tiny_safety_checker

    _, plain, _ = run_job_in_process(tmp_path, {}, name="plain")
    for threshold, flagged in ((-2.0, True), (2.0, False)):
        folder = build_tiny_safety_checker(str(tmp_path / f"checker{threshold}"), threshold)
        quality = {"scorers": ["safety"], "safety_model": folder}
        _, rows, _ = run_job_in_process(tmp_path, quality, name=f"safe{threshold}")
        assert all(r["nsfw"] is flagged for r in rows)
        assert all((r["nsfw_score"] > 0) is flagged for r in rows)
        assert all(-1 - threshold - 1e-4 <= r["nsfw_score"] <= 1 - threshold + 1e-4 for r in rows)
        assert [r["sha256"] for r in rows] == [r["sha256"] for r in plain]  # images kept as drawn
    # a threshold between the images' closest-concept cosines flags some and not others
    cosines = sorted(r["nsfw_score"] + 2.0 for r in rows)
    middle = (cosines[len(cosines) // 2 - 1] + cosines[len(cosines) // 2]) / 2
    folder = build_tiny_safety_checker(str(tmp_path / "checker-mid"), middle)
    _, rows, _ = run_job_in_process(tmp_path, {"scorers": ["safety"], "safety_model": folder},
                                    name="safe-mid")
    assert 0 < sum(r["nsfw"] for r in rows) < len(rows)
    assert all(r["nsfw"] == (r["nsfw_score"] > 0) for r in rows)
    with pytest.raises(SpecError, match="safety_model"):
        build_spec({"input": {"path": "x"}, "quality": {"scorers": ["safety"]}})
