"""Duplicate groups across a whole output: a planted set run through real shard workers
(exact copies, JPEG re-encodes, one-pixel shifts, distinct scenes), ``synthset dedup``,
and the LSH search's memory bound on a million hashes."""

import io
import itertools
import json
import time
import tracemalloc

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from models import scenes
from models.base import ImageModel
from pipeline.cli import main
from pipeline.input.shards import plan_shards
from pipeline.output.dedup import find_groups, write_duplicates
from pipeline.output.lsh import band_slices, near_pairs, spill_all
from pipeline.output.storage import OutputFolder
from pipeline.output.verify import verify_output
from pipeline.runner import claim_output, make_plan, write_success
from pipeline.spec import build_spec
from pipeline.stages.worker import ShardWorker
from tests.conftest import write_prompts
from tests.pipeline.stages.scene_model import TextEmbeds

GEOMETRIES = list(itertools.product(scenes.SIZES, scenes.SHAPES, scenes.POSITIONS))[::2]


def textured_scene(i: int, size: int = 64) -> np.ndarray:
    """Scene ``i`` (its own layout) with shading and grain, as generated images have."""
    s, shape, position = GEOMETRIES[i]
    colours = scenes.COLOURS
    attrs = dict(size=s, shape=shape, position=position, colour=colours[i % 8],
                 background=colours[(i + 3) % 8])
    rng = np.random.default_rng(i)
    img = scenes.render(attrs, size, rng).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size
    tilt = rng.uniform(-30, 30, 3)
    img += (tilt[0] * xx + tilt[1] * yy + tilt[2] * xx * yy)[..., None]
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg_copy(pixels: np.ndarray, quality: int = 95) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def shifted(pixels: np.ndarray) -> np.ndarray:
    """One pixel to the right, the first column repeated."""
    out = np.roll(pixels, 1, axis=1)
    out[:, 0] = pixels[:, 0]
    return out


PLANTED = {"copy": lambda i: textured_scene(i), "jpeg": lambda i: jpeg_copy(textured_scene(i)),
           "shift": lambda i: shifted(textured_scene(i))}


class PlantedModel(ImageModel):
    """``scene I`` draws scene I; ``copy I``, ``jpeg I`` and ``shift I`` its altered copies."""

    model_id, native_size = "planted", (64, 64)

    def encode_prompt(self, prompts, negative_prompts=None):
        return TextEmbeds(list(prompts), [False] * len(prompts))

    def generate(self, embeds, seeds, params):
        out = []
        for prompt in embeds.prompts:
            kind, i = prompt.split()
            out.append(textured_scene(int(i)) if kind == "scene" else PLANTED[kind](int(i)))
        return np.stack(out)


PROMPTS = ([f"scene {i}" for i in range(len(GEOMETRIES))]
           + ["copy 0", "copy 0", "jpeg 1", "shift 2", "jpeg 3", "copy 3"])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A committed output of the planted set, shards of 5 so groups span shards."""
    tmp = tmp_path_factory.mktemp("planted")
    spec = build_spec({"input": {"path": write_prompts(tmp / "p.parquet", PROMPTS)},
                       "model": {"family": "null"}, "output": {"path": str(tmp / "out")},
                       "runtime": {"shard_size": 5, "batch_size": 4},
                       "quality": {"scorers": ["phash"]}})
    plan = make_plan(spec)
    folder = OutputFolder(spec.output.path)
    claim_output(folder, plan, False)
    worker = ShardWorker(spec, PlantedModel(), plan.keys, folder, True)
    for shard in plan_shards(plan.inputs, 5):
        worker.run(shard)
    write_success(folder, plan)
    rows = [r for p in sorted((tmp / "out").glob("?????.parquet")) for r in pq.read_table(p)
            .to_pylist()]
    return folder, rows


def _groups(table) -> set[frozenset]:
    by_group: dict[int, set] = {}
    for r in table.to_pylist():
        by_group.setdefault(r["group"], set()).add(r["key"])
    return {frozenset(g) for g in by_group.values()}


def test_planted_copies_group_and_distinct_scenes_do_not(planted):
    folder, rows = planted
    key = {r["prompt"]: r["key"] for r in rows if r["prompt"] != "copy 0"}
    copies0 = {r["key"] for r in rows if r["prompt"] == "copy 0"}
    summary = write_duplicates(folder, threshold=4)
    table = pq.read_table(folder.display("_duplicates.pq"))
    groups = _groups(table)
    assert frozenset({key["scene 0"], *copies0}) in groups  # exact copies (equal sha256)
    assert frozenset({key["scene 1"], key["jpeg 1"]}) in groups  # re-encoded
    assert frozenset({key["scene 3"], key["jpeg 3"], key["copy 3"]}) in groups
    # every other scene is alone: no false groups among distinct renders
    grouped = set().union(*groups)
    assert not grouped & {key[f"scene {i}"] for i in range(4, len(GEOMETRIES))}
    assert summary["groups"] == len(groups) and summary["rows"] == len(PROMPTS)
    for r in table.to_pylist():  # the representative is the group's first key
        assert r["representative"] == min(k for g in groups if r["key"] in g for k in g)
    assert verify_output(folder).ok  # _duplicates.pq is bookkeeping, not an orphan


def test_one_pixel_shift_groups_at_the_default_threshold(planted):
    folder, rows = planted
    key = {r["prompt"]: r["key"] for r in rows}
    table, stats = find_groups(folder, threshold=4)
    assert frozenset({key["scene 2"], key["shift 2"]}) in _groups(table)
    assert stats["signature"] == "ahash"
    h = {r["prompt"]: int(r["phash"], 16) for r in rows}
    assert (h["scene 2"] ^ h["shift 2"]).bit_count() > 4  # what pHash alone missed


def test_colour_check_splits_scenes_that_differ_in_colour_only(tmp_path):
    """The demo's false pair: pHash (grey levels only) puts a white circle on orange and a
    white square on yellow within 4 bits; the quarters' colours tell them apart."""
    from pipeline.stages.scorers.phash import colours_close, near_signatures, phash_hex

    attrs = dict(size="small", colour="white", position="on the left")
    a = scenes.render({**attrs, "shape": "circle", "background": "orange"}, 64)
    b = scenes.render({**attrs, "shape": "square", "background": "yellow"}, 64)
    assert (int(phash_hex(a), 16) ^ int(phash_hex(b), 16)).bit_count() <= 4
    sa, sb, shifted_a = near_signatures(a), near_signatures(b), near_signatures(shifted(a))
    colour = {n: np.array([int(s["colour_2x2"], 16)], np.uint64)
              for n, s in (("a", sa), ("b", sb), ("shift", shifted_a))}
    assert not colours_close(colour["a"], colour["b"])[0]
    assert colours_close(colour["a"], colour["shift"])[0]
    assert (int(sa["ahash"], 16) ^ int(shifted_a["ahash"], 16)).bit_count() <= 4


def test_dedup_command_reruns_with_another_threshold(planted, capsys):
    folder, rows = planted
    key = {r["prompt"]: r["key"] for r in rows if r["prompt"] != "copy 0"}
    h = {r["prompt"]: int(r["ahash"], 16) for r in rows}
    jpeg_bits = (h["scene 1"] ^ h["jpeg 1"]).bit_count()
    assert main(["dedup", folder.display(), "--threshold", "6", "--bands", "7"]) == 0
    assert "duplicate groups" in capsys.readouterr().out
    groups = _groups(pq.read_table(folder.display("_duplicates.pq")))
    assert frozenset({key["scene 1"], key["jpeg 1"]}) in groups
    manifest = json.loads(open(folder.display("_SUCCESS")).read())
    assert manifest["quality"]["duplicates"]["threshold"] == 6
    assert main(["dedup", folder.display(), "--threshold", "0"]) == 0
    groups = _groups(pq.read_table(folder.display("_duplicates.pq")))
    assert jpeg_bits > 0 and not any(key["jpeg 1"] in g for g in groups)
    assert any(key["scene 0"] in g and len(g) == 3 for g in groups)  # exact copies still


def test_shards_read_in_parallel_arrive_in_shard_order(planted):
    """Two readers at once (object storage round trips overlap), the rows as one reader
    gives them: row numbers index the union-find, so order is part of the result."""
    from pipeline.output.dedup import _row_groups
    from pipeline.output.progress import committed_shards

    folder, rows = planted
    names = sorted(committed_shards(folder))
    assert len(names) > 4  # more shards than the two readers hold ahead
    one = [t.to_pylist() for t in _row_groups(folder, names, ["key", "ahash"], readers=1)]
    two = [t.to_pylist() for t in _row_groups(folder, names, ["key", "ahash"], readers=2)]
    assert two == one and [r["key"] for t in one for r in t] == \
        [r["key"] for r in rows if r["status"] == "success"]


def test_band_slices_cover_the_64_bits():
    for bands in (1, 4, 5, 16):
        slices = band_slices(bands)
        assert sum(w for _, w in slices) == 64 and slices[0][0] == 0
        assert all(s + w == nxt for (s, w), (nxt, _) in zip(slices, slices[1:]))


def test_a_million_hashes_in_bounded_memory(tmp_path):
    from pipeline.stages.scorers.phash import colours_close

    rng = np.random.default_rng(0)
    n, budget = 1_000_000, 1 << 16
    hashes = rng.integers(0, 2**64, n, dtype=np.uint64)
    colours = np.zeros(n, np.uint64)
    planted = {i * 9973: i * 9973 + 7 for i in range(1, 50)}  # pairs 2 bits apart
    for a, b in planted.items():
        hashes[b] = hashes[a] ^ np.uint64(0b101 << (a % 60))
    recoloured = {a: b for a, b in planted.items() if a % 2}  # the colour check refuses
    for b in recoloured.values():
        colours[b] = np.uint64(31 << 20)  # one quarter's channel 31 steps away
    spill = spill_all(np.array_split(hashes, 40), str(tmp_path))
    confirm = spill_all(np.array_split(colours, 40), str(tmp_path))
    del hashes, colours
    tracemalloc.start()
    t, cpu = time.perf_counter(), time.process_time()
    found, stats = near_pairs(spill, threshold=4, bands=4, max_rows=budget, confirm=confirm,
                              agree=colours_close)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    spill.close()
    confirm.close()
    groups = {tuple(g) for g in found.groups().values()}
    assert groups >= {(a, b) for a, b in planted.items() if a not in recoloured}
    assert not groups & set(recoloured.items()) and stats["refused"] >= len(recoloured)
    assert len(groups) <= len(planted) - len(recoloured) + 2  # random hashes rarely collide
    assert stats["max_rows_held"] <= 1.1 * budget  # a pass holds one partition of a band
    assert peak < 16 * n  # less than the bare hash and colour columns (16 MB)
    print(f"1M hashes: {seconds:.1f} s ({cpu:.1f} s CPU), peak {peak / 1e6:.1f} MB traced, "
          f"{stats}")
    assert cpu < 60, cpu  # CPU, not wall time: the test machine's cores are shared
