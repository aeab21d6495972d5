"""``quality.keep_rejected``: best-of-n's other draws stored beside the kept ones, in every
format, with their own keys, told apart by ``status``/``kept``, and carried through verify,
``--retry-failed``, the counts, dedup and the report."""

import hashlib
import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.input.shards import plan_shards, split_rejected_key
from pipeline.output.dedup import write_duplicates
from pipeline.output.formats import get_format
from pipeline.output.storage import OutputFolder
from pipeline.output.verify import verify_output
from pipeline.runner import claim_output, make_plan, reopen_damaged, write_success
from pipeline.spec import SpecError, build_spec
from pipeline.stages.quality import attempt_seed
from pipeline.stages.worker import ShardWorker
from tests.conftest import write_prompts
from tests.pipeline.stages.scene_model import SceneModel
from tests.pipeline.stages.test_quality import BEST_OF, PROMPTS, FlakyScenes, retry_healed

KEEP = {**BEST_OF, "keep_rejected": True}
FORMATS = ("files", "webdataset", "parquet")


def run_complete(tmp_path, quality, fmt="files", model=None, name="out", shard_size=5):
    """A whole job through one in-process worker: claimed, committed, deduplicated and
    closed with ``_SUCCESS``. Returns the spec, folder, markers, manifest and rows."""
    src = write_prompts(tmp_path / "p.parquet", PROMPTS)
    spec = build_spec({"input": {"path": src}, "model": {"family": "null"},
                       "output": {"path": str(tmp_path / name), "format": fmt},
                       "runtime": {"batch_size": 4, "shard_size": shard_size},
                       "quality": quality})
    plan = make_plan(spec)
    folder = OutputFolder(spec.output.path)
    claim_output(folder, plan, False)
    worker = ShardWorker(spec, model or SceneModel(), plan.keys, folder, True)
    markers = [worker.run(s) for s in plan_shards(plan.inputs, shard_size)]
    manifest = write_success(folder, plan, duplicates=write_duplicates(folder))
    return spec, folder, markers, manifest, _rows(tmp_path / name)


def _rows(out) -> list[dict]:
    """Every metadata row of the output, in file order, without image bytes."""
    tables = [pq.read_table(p) for p in sorted(out.glob("?????.parquet"))]
    return [r for t in tables for r in
            t.drop_columns([c for c in ("image",) if c in t.column_names]).to_pylist()]


def _stored(folder, fmt, rows) -> dict[str, bytes]:
    images = {}
    for shard in sorted({r["key"][:5] for r in rows}):
        mine = sorted((r for r in rows if r["key"].startswith(shard)), key=lambda r: r["key"])
        images.update(get_format(fmt).read_images(folder, shard, mine))
    return images


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_draw_is_stored_under_its_own_key_and_told_apart(tmp_path, fmt):
    model = SceneModel()
    _, folder, markers, manifest, rows = run_complete(tmp_path, KEEP, fmt, model)
    kept = [r for r in rows if r["status"] != "rejected"]
    rejects = [r for r in rows if r["status"] == "rejected"]
    assert len(kept) == len(PROMPTS) and rejects
    assert all(r["kept"] is True for r in kept) and all(r["kept"] is False for r in rejects)
    assert all(r["accepted"] is False for r in rejects)  # a passing draw is always kept
    assert len(rows) == len(model.seeds_drawn)  # every draw is a row: none lost, none twice
    # keys: KEY_aN of a sample of the same shard, unique, never a sample key
    by_key = {r["key"]: r for r in kept}
    assert len({r["key"] for r in rows}) == len(rows)
    for r in rejects:
        base, attempt = split_rejected_key(r["key"])
        assert base in by_key and attempt == r["attempt"] != by_key[base]["attempt"]
        assert r["prompt"] == by_key[base]["prompt"] and r["id"] == by_key[base]["id"]
    # a sample's draws are attempts 0..last, each with its attempt's seed; only the last
    # may pass (the model draws a scene right when seed % 3 == 0)
    for key, sample in by_key.items():
        draws = sorted([sample] + [r for r in rejects if r["key"].startswith(key + "_")],
                       key=lambda r: r["attempt"])
        assert [d["attempt"] for d in draws] == list(range(len(draws)))
        assert all(d["seed"] == attempt_seed(draws[0]["seed"], d["attempt"]) for d in draws)
        if sample["scene_match"] is not None:
            assert all(d["seed"] % 3 for d in draws[:-1])
    # the stored bytes are each draw's own image, checked against its row
    images = _stored(folder, fmt, rows)
    assert set(images) == {r["key"] for r in rows}
    for r in rows:
        assert hashlib.sha256(images[r["key"]]).hexdigest() == r["sha256"]
    for r in rejects[:3]:
        pixels = np.asarray(Image.open(io.BytesIO(images[r["key"]])).convert("RGB"))
        assert np.array_equal(pixels, model._draw(r["prompt"], r["seed"]))
    # counts: markers, _SUCCESS (status --json shows it as is)
    assert sum(m["quality"]["rejected_stored"] for m in markers) == len(rejects)
    assert manifest["quality"]["rejected_stored"] == len(rejects)
    assert manifest["successes"] == len(PROMPTS) and manifest["failed"] == 0
    report = verify_output(folder)
    assert report.ok, report.format()
    assert report.images == len(PROMPTS) and report.rejected == len(rejects)
    assert f"{len(rejects)} rejected draws" in report.format()


def test_tar_json_says_kept_false_and_files_lie_beside_the_samples(tmp_path):
    _, folder, _, _, rows = run_complete(tmp_path, KEEP, "webdataset", name="wds")
    rejects = {r["key"] for r in rows if r["status"] == "rejected"}
    with tarfile.open(tmp_path / "wds" / "00000.tar") as tar:
        docs = {json.load(tar.extractfile(m))["key"]: json.load(tar.extractfile(m))
                for m in tar if m.name.endswith(".json")}
    shard0 = {k for k in rejects if k.startswith("00000")}
    assert shard0 and {k for k, d in docs.items() if d["kept"] is False} == shard0
    assert all({"attempt", "accepted", "kept"} <= set(d) for d in docs.values())
    _, _, _, _, rows = run_complete(tmp_path, KEEP, "files", name="files")
    names = {p.name for p in (tmp_path / "files" / "00000").iterdir()}
    assert names == {f"{r['key']}.png" for r in rows if r["key"].startswith("00000")}


def test_verify_names_a_damaged_rejected_draw_and_repair_regenerates_it(tmp_path):
    spec, folder, _, _, rows = run_complete(tmp_path, KEEP, "files")
    reject = next(r for r in rows if r["status"] == "rejected")
    (tmp_path / "out" / reject["file"]).write_bytes(b"not the draw")
    report = verify_output(folder)
    assert not report.ok and any(reject["file"] in p and "sha256" in p for p in report.problems)
    # --repair: the damaged shard's marker goes, the shard is drawn again, same bytes
    assert reopen_damaged(folder) == [reject["key"][:5]]
    plan = make_plan(spec)
    shard = next(s for s in plan_shards(plan.inputs, 5)
                 if plan.keys.shard_name(s.id) == reject["key"][:5])
    ShardWorker(spec, SceneModel(), plan.keys, folder, True).run(shard)
    assert _rows(tmp_path / "out") == rows and verify_output(folder).ok


def test_verify_names_an_uncounted_rejected_draw(tmp_path):
    _, folder, _, _, rows = run_complete(tmp_path, KEEP, "files")
    reject = next(r for r in rows if r["status"] == "rejected")
    shard = reject["key"][:5]
    marker = json.loads((tmp_path / "out" / f"{shard}_stats.json").read_text())
    marker["quality"]["rejected_stored"] += 1
    (tmp_path / "out" / f"{shard}_stats.json").write_text(json.dumps(marker))
    assert any("marker counts" in p for p in verify_output(folder).problems)


def test_rejected_draws_take_no_part_in_duplicate_groups_or_the_report(tmp_path):
    _, folder, _, manifest, rows = run_complete(tmp_path, KEEP, "files")
    # a wrong-colour draw has its kept sibling's layout: pHash alike, so if rejects took
    # part they would group with their own sample
    groups = pq.read_table(tmp_path / "out" / "_duplicates.pq").to_pylist()
    assert not any(split_rejected_key(g["key"]) for g in groups)
    assert manifest["quality"]["duplicates"]["rows"] == len(PROMPTS)
    from pipeline.report.collect import collect
    from pipeline.report.quality import collect_quality
    from pipeline.report.quality_render import quality_sections

    q = collect_quality(folder, collect(folder))
    assert sum(len(v) for v in q.scores.values()) == sum(
        r["scene_match"] is not None for r in rows if r["status"] == "success")
    rejects = sum(r["status"] == "rejected" for r in rows)
    assert f"{rejects} rejected draws stored" in "".join(quality_sections(q))


def test_default_stores_no_rejects_and_keeps_the_same_samples(tmp_path):
    _, _, markers, _, plain = run_complete(tmp_path, BEST_OF, "webdataset", name="plain")
    _, _, _, _, kept = run_complete(tmp_path, KEEP, "webdataset", name="kept")
    assert "kept" not in plain[0] and all(r["status"] == "success" for r in plain)
    assert "rejected_stored" not in markers[0]["quality"]
    same = [{k: v for k, v in r.items() if k != "kept"} for r in kept if r["kept"]]
    assert same == plain  # keeping rejects changes no sample's row
    with pytest.raises(SpecError, match="keep_rejected"):
        build_spec({"input": {"path": "x"}, "quality": {"keep_rejected": True}})
    base = {"input": {"path": "x.parquet"}, "quality": BEST_OF}
    assert build_spec(base).fingerprint() != build_spec({**base, "quality": KEEP}).fingerprint()


@pytest.mark.parametrize("fmt", FORMATS)
def test_retry_failed_carries_the_rejected_draws_of_kept_samples(tmp_path, fmt):
    model = FlakyScenes()
    spec, folder, _, _, before = run_complete(tmp_path, KEEP, fmt, model)
    assert before[0]["status"] == "error"
    retry_healed(spec, model)
    write_success(folder, make_plan(spec), duplicates=write_duplicates(folder))
    after = _rows(tmp_path / "out")
    assert after[0]["status"] == "success"
    pick = ("key", "status", "seed", "attempt", "accepted", "kept", "sha256", "phash")
    carried = [{k: r[k] for k in pick} for r in before[1:]]
    assert carried == [{k: r[k] for k in pick} for r in after
                       if r["key"] != after[0]["key"] and not r["key"].startswith(
                           after[0]["key"] + "_")]
    report = verify_output(folder)
    assert report.ok, report.format()
    assert report.rejected == sum(r["status"] == "rejected" for r in after)
