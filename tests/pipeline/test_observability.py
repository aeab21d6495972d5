"""Prometheus metrics scraped from a real local Ray, and the run report in a real browser."""

import hashlib
import io
import json
import re
import shutil
import subprocess
import time
import urllib.request
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.output.storage import OutputFolder
from pipeline.output.verify import verify_output
from pipeline.report.collect import collect
from pipeline.report.render import thumbnail
from pipeline.report.write import write_report
from pipeline.runner import run_job
from pipeline.spec import build_spec
from tests.conftest import write_prompts

PROMPTS = [f"a {c} square at the top on a grey background, take {i}"
           for i, c in enumerate(["red", "green", "blue", "yellow"] * 2)]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_SAMPLE = re.compile(r'^(\w+)\{(.*)\} (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _run(tmp_path, tiny_gan, output, fmt="files", options=None, prompts=PROMPTS):
    src = write_prompts(tmp_path / f"p-{uuid.uuid4().hex[:6]}.parquet", prompts)
    raw = {"name": f"obs-{uuid.uuid4().hex[:8]}", "input": {"path": src},
           "model": {"family": "gan", "path": tiny_gan},
           "output": {"path": str(output), "format": fmt},
           "runtime": {"shard_size": 3, "batch_size": 2, "actors": 1,
                       "progress_interval_s": 0.2},
           "storage_options": options or {}}
    spec = build_spec(raw)
    return spec, run_job(spec, show_progress=False)


@pytest.fixture(scope="module")
def files_run(ray_local, tmp_path_factory, tiny_gan):
    """One finished ``files`` job with two quarantined rows: (spec, manifest, output)."""
    tmp = tmp_path_factory.mktemp("files-run")
    spec, manifest = _run(tmp, tiny_gan, tmp / "out", prompts=PROMPTS[:6] + [None, "  "])
    return spec, manifest, tmp / "out"


def _scrape(port: int, job_name: str) -> dict[tuple[str, str], float]:
    """``{(metric, stage): value}`` of one job's series (summed over reporting processes)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    found: dict[tuple[str, str], float] = {}
    for line in body.decode().splitlines():
        m = _SAMPLE.match(line)
        if not m or not m.group(1).startswith("ray_synthset_"):
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        if labels.get("job_name") == job_name:
            key = (m.group(1), labels.get("stage", ""))
            found[key] = found.get(key, 0.0) + float(m.group(3))
    return found


# First after files_run: the agent drops a gauge ~2 export intervals (20 s) after its last
# update, and shards_in_flight is last set when the run ends.
def test_metrics_reach_prometheus_endpoint(ray_local, files_run):
    spec, manifest, _ = files_run
    assert manifest["successes"] == 6 and manifest["failed"] == 2
    # The node's metrics agent: what Prometheus scrapes (MetricsExportPort of ray.nodes()).
    port = ray_local.nodes()[0]["MetricsExportPort"]
    wanted = {("ray_synthset_images_generated_total", ""): 6.0,
              ("ray_synthset_images_failed_total", ""): 2.0,
              ("ray_synthset_shards_committed_total", ""): 3.0,
              ("ray_synthset_stage_seconds_count", "read"): 3.0,
              ("ray_synthset_stage_seconds_count", "generate"): 2.0,  # shard 2: no prompt left
              ("ray_synthset_stage_seconds_count", "metadata"): 3.0,
              ("ray_synthset_shard_seconds_count", ""): 3.0,
              ("ray_synthset_shards_in_flight", ""): 0.0}
    deadline, seen = time.time() + 30, {}
    while time.time() < deadline:  # the agent exports every few seconds
        seen = _scrape(port, spec.name)
        if all(seen.get(k) == v for k, v in wanted.items()):
            break
        time.sleep(1)
    assert {k: seen.get(k) for k in wanted} == wanted, seen
    assert seen[("ray_synthset_stage_seconds_sum", "generate")] > 0


def _screenshot(page, tmp_path) -> np.ndarray:
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1200,900", page.as_uri()],
                   check=True, timeout=90, capture_output=True)
    return np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)


def _found_at(screen: np.ndarray, thumb: np.ndarray, tol: int = 3) -> tuple[int, int] | None:
    """Where ``thumb`` appears pixel for pixel (within ``tol``) in ``screen``, or None.

    Chromium draws an untagged PNG at its natural size exactly; the tiny GAN's images
    differ from each other by 1-3 levels on average, so the mean bound tells them apart."""
    h, w = thumb.shape[:2]
    ys, xs = np.nonzero(np.abs(screen - thumb[0, 0]).max(axis=2) <= tol)
    keep = (ys + h <= screen.shape[0]) & (xs + w <= screen.shape[1])
    ys, xs = ys[keep], xs[keep]
    dy, dx = (a.ravel() for a in np.meshgrid(np.linspace(0, h - 1, 5, dtype=int),
                                             np.linspace(0, w - 1, 5, dtype=int)))
    probes = screen[ys[:, None] + dy, xs[:, None] + dx]  # (candidates, 25, 3)
    near = np.abs(probes - thumb[dy, dx]).max(axis=(1, 2)) <= tol
    for y, x in zip(ys[near], xs[near]):
        if np.abs(screen[y:y + h, x:x + w] - thumb).mean() <= 0.5:
            return int(y), int(x)
    return None


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs "
                    "it with apt-get where it can)")
def test_report_renders_in_chromium(files_run, tmp_path, capsys):
    out = files_run[2]
    assert main(["report", str(out)]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert page.count("<img src='data:image/png;base64,") == 6
    assert not re.search(r"(src|href)=['\"]?(https?:|//)|<link|<script|url\(", page)
    assert "<svg" in page and "<polyline" in page  # throughput chart
    assert "prompt is null" in page and "prompt is empty or whitespace only" in page
    screen = _screenshot(out / "report.html", tmp_path)
    thumbs = [np.asarray(thumbnail(s.data), dtype=np.int16)
              for s in collect(OutputFolder(str(out))).samples]
    places = [_found_at(screen, t) for t in thumbs]
    assert all(places), f"images not found in the screenshot at {places}"
    assert len(set(places)) == len(thumbs)  # each at its own place in the grid
    assert verify_output(OutputFolder(str(out))).ok  # the report is not an orphan object


def test_report_reads_webdataset(ray_local, tmp_path, tiny_gan):
    out = tmp_path / "webdataset"
    _run(tmp_path, tiny_gan, out, "webdataset")
    data = collect(OutputFolder(str(out)))
    assert len(data.samples) == 8 and len(data.markers) == 3
    by_key = {r["key"]: r["sha256"] for n in ("00000", "00001", "00002")
              for r in pq.read_table(out / f"{n}.parquet", columns=["key", "sha256"]).to_pylist()}
    for s in data.samples:
        assert hashlib.sha256(s.data).hexdigest() == by_key[s.key]
    html_path, png_path = write_report(OutputFolder(str(out)), str(tmp_path / "r" / "x.html"))
    sheet = Image.open(tmp_path / "r" / "x.png")
    assert sheet.size == (6 * 144 + 16, 36 + 2 * (128 + 16 + 3 * 13))
    assert "Time by stage" in (tmp_path / "r" / "x.html").read_text()


def test_report_on_s3_parquet_format(ray_local, tmp_path, tiny_gan, s3_bucket):
    import s3fs

    bucket, options = s3_bucket
    url = f"s3://{bucket}/runs/r1"
    _run(tmp_path, tiny_gan, url, "parquet", options, prompts=PROMPTS[:4])
    assert main(["report", url, "--storage-options", json.dumps(options)]) == 0
    fs = s3fs.S3FileSystem(**options)
    page = fs.cat(f"{bucket}/runs/r1/report.html").decode()
    assert page.count("data:image/png;base64,") == 4
    sheet = Image.open(io.BytesIO(fs.cat(f"{bucket}/runs/r1/report.png")))
    assert sheet.getextrema() != ((255, 255),) * 3  # not blank


def test_status_json_has_what_a_machine_needs(files_run, capsys):
    assert main(["status", str(files_run[2]), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "complete" and status["eta_s"] == 0
    assert (status["images_done"], status["images_failed"], status["images_total"]) == (6, 2, 8)
    assert (status["shards_done"], status["shards_total"]) == (3, 3)
    assert status["images_per_s"] > 0 and status["fraction_done"] == 1.0
    assert status["age_s"] >= 0


def test_status_json_names_a_stalled_run(files_run, tmp_path, capsys):
    folder = OutputFolder(str(tmp_path / "stalled"))
    folder.write_bytes("_job.json", (files_run[2] / "_job.json").read_bytes())
    folder.write_json("_progress.json", {"state": "running", "images_done": 2,
                                         "images_failed": 0, "updated_at": time.time() - 900})
    assert main(["status", folder.url, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "stalled" and "driver gone" in status["note"]
    assert status["fraction_done"] == 0.25 and status["age_s"] >= 900


def test_a_metrics_failure_never_fails_the_job(monkeypatch, caplog):
    from pipeline.executor import metrics

    class Broken:
        def inc(self, value, tags):
            raise RuntimeError("no metrics agent")

    monkeypatch.setattr(metrics, "_instruments", lambda: {"images_generated": Broken()})
    recorder = metrics.JobMetrics("j")
    recorder.images(3, 0)
    recorder.images(3, 0)  # now a no-op
    recorder.shard_committed({"retries": 2, "stage_seconds": {"read": 0.1}, "duration_s": 1})
    assert recorder.m is None and caplog.text.count("metrics are off") == 1
