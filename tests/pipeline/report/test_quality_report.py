"""The report's quality sections, from a scored output, checked in headless Chromium."""

import json
import re
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from models import scenes
from pipeline.cli import main
from pipeline.input.shards import plan_shards
from pipeline.output.dedup import write_duplicates
from pipeline.output.storage import OutputFolder
from pipeline.report.collect import collect
from pipeline.report.images import thumbnail
from pipeline.report.quality import collect_quality
from pipeline.runner import claim_output, make_plan, write_success
from pipeline.spec import build_spec
from pipeline.stages.worker import ShardWorker
from tests.conftest import write_prompts
from tests.pipeline.stages.scene_model import SceneModel

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMPTS = [scenes.caption(a) for a in scenes.all_combinations()[::131]][:10]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A complete output of scene prompts, two images each; small scenes are drawn alike
    (collapsed prompts: exact duplicates, variety 0), some seeds in the wrong colour."""
    tmp = tmp_path_factory.mktemp("scored")
    spec = build_spec({"name": "scored", "input": {"path": write_prompts(tmp / "p.parquet",
                                                                         PROMPTS)},
                       "model": {"family": "null"}, "output": {"path": str(tmp / "out")},
                       "generation": {"images_per_prompt": 2},
                       "runtime": {"shard_size": 4, "batch_size": 4},
                       "quality": {"scorers": ["phash", "scene"]}})
    plan = make_plan(spec)
    folder = OutputFolder(spec.output.path)
    claim_output(folder, plan, False)
    worker = ShardWorker(spec, SceneModel(still=("small",)), plan.keys, folder, True)
    for shard in plan_shards(plan.inputs, 4):
        worker.run(shard)
    write_success(folder, plan, duplicates=write_duplicates(folder))
    rows = [r for p in sorted((tmp / "out").glob("?????.parquet"))
            for r in pq.read_table(p).to_pylist()]
    return folder, tmp / "out", rows


def test_success_and_status_carry_the_quality_summary(scored, capsys):
    folder, out, rows = scored
    manifest = json.loads((out / "_SUCCESS").read_text())
    q = manifest["quality"]
    small = sum(1 for p in PROMPTS if " small " in f" {p} ")
    assert q["scored"] == len(rows) == 2 * len(PROMPTS)
    assert q["variety"]["prompts"] == len(PROMPTS)
    varieties = {r["prompt"]: r["variety"] for r in rows}
    assert q["variety"]["mean_phash_distance"] == pytest.approx(
        np.mean(list(varieties.values())), abs=1e-3)
    assert all(v == 0 for p, v in varieties.items() if " small " in f" {p} ")
    assert q["duplicates"]["groups"] >= small  # each collapsed prompt: one group at least
    assert main(["status", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quality"] == q


def test_quality_data_reads_scores_lowest_duplicates_and_labels(scored):
    folder, _, rows = scored
    q = collect_quality(folder, collect(folder))
    assert sorted(q.scores["scene_match"]) == sorted(r["scene_match"] for r in rows)
    worst = min(r["scene_match"] for r in rows)
    assert q.lowest and f"scene_match {worst:.3f}" in q.lowest[0][1]
    assert "wrong: colour" in q.lowest[0][1]
    assert all(len(group) >= 2 for group in q.duplicates)
    assert q.duplicates and len({s.data for s in q.duplicates[0]}) == 1  # exact copies
    wrong_colour = sum("colour" in r["scene_failed"] for r in rows)
    assert q.labels["colour"] == (len(rows) - wrong_colour, len(rows))
    assert q.labels["shape"] == (len(rows), len(rows))
    assert q.variety[0][1] == 0.0  # the least varied prompt first


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_shows_the_quality_sections_in_chromium(scored, tmp_path):
    folder, out, _ = scored
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    for title in ("Quality", "Score histograms", "Lowest-scoring samples", "Duplicate groups",
                  "Variety per prompt", "Scene attributes"):
        assert f"<h2>{title}</h2>" in page
    assert page.count("<svg class='hist'") == 1  # scene_match (phash has no number)
    assert not re.search(r"(src|href)=['\"]?(https?:|//)|<link|<script|url\(", page)
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    "--no-first-run", "--disable-background-networking", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1200,4000", (out / "report.html").as_uri()],
                   check=True, timeout=90, capture_output=True)
    screen = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    q = collect_quality(folder, collect(folder))
    group = [np.asarray(thumbnail(s.data), dtype=np.int16) for s in q.duplicates[0]]
    places = [_found_all(screen, t) for t in group]
    # the group's copies stand side by side: one row, different columns
    assert all(len(p) >= len(group) for p in places), places
    rows_of = {y for y, _ in places[0]}
    assert any(len({x for y, x in places[0] if y == row}) >= len(group) for row in rows_of)
    lowest = np.asarray(thumbnail(q.lowest[0][0].data), dtype=np.int16)
    assert _found_all(screen, lowest)


def test_prompt_rows_group_every_seed_of_the_first_prompts(scored):
    from pipeline.report.render import render_html

    folder, out, rows = scored
    data = collect(folder)
    assert len(data.prompt_rows) == 4  # PROMPT_ROWS
    by_key = {r["key"]: r for r in rows}
    for samples, prompt in zip(data.prompt_rows, PROMPTS, strict=False):
        assert [by_key[s.key]["image_index"] for s in samples] == [0, 1]
        assert {s.prompt for s in samples} == {prompt}
        assert {by_key[s.key]["id"] for s in samples} == {by_key[samples[0].key]["id"]}
    page = render_html(data)
    section = page.split("One prompt, every seed")[1].split("<h2>")[0]
    assert section.count("<h3>") == 4 and section.count("<img ") == 8
    assert "seed #1" in section and PROMPTS[0] in section


def _found_all(screen: np.ndarray, thumb: np.ndarray) -> list[tuple[int, int]]:
    """Every place (y, x) where ``thumb`` is drawn exactly (thumbnails are pixel-exact)."""
    h, w = thumb.shape[:2]
    ys, xs = np.nonzero((screen[:-h, :-w] == thumb[0, 0]).all(axis=2))
    return [(int(y), int(x)) for y, x in zip(ys, xs)
            if np.abs(screen[y:y + h, x:x + w] - thumb).max() <= 2]


def test_captions_use_an_installed_cjk_font_else_pillows_own(tmp_path, monkeypatch):
    """The founding prompt 卡通风格的人物 captions in a font that has its glyphs, when the
    machine has one; a missing or broken candidate is passed over."""
    from PIL import ImageFont

    from pipeline.report import render

    broken = tmp_path / "broken.ttc"
    broken.write_bytes(b"not a font")
    opened = []

    def truetype(path, size):
        opened.append((path, size))
        if path == str(broken):
            raise OSError("unknown file format")
        return ("font", path, size)
    monkeypatch.setattr(ImageFont, "truetype", truetype)
    found = tmp_path / "cjk.ttc"
    found.write_bytes(b"a font")
    chosen = render.caption_font(11, (str(tmp_path / "missing.ttc"), str(broken), str(found)))
    assert chosen == ("font", str(found), 11) and [p for p, _ in opened] == [str(broken),
                                                                              str(found)]
    monkeypatch.undo()
    opened.clear()
    default = render.caption_font(11, (str(tmp_path / "missing.ttc"),))
    assert not opened and default.getbbox("a")[2] > 0  # Pillow's own font
