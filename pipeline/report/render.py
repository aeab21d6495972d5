"""The run report's pictures: a self-contained HTML page (inline SVG charts, base64
thumbnails, no external assets) and a PNG contact sheet drawn with Pillow."""

from __future__ import annotations

import base64
import html
import os
import time

from PIL import Image, ImageDraw, ImageFont

from pipeline.report.collect import RunData, Sample
from pipeline.report.images import THUMB, png_bytes, thumbnail
from pipeline.report.quality_render import quality_sections

__all__ = ["THUMB", "contact_sheet", "png_bytes", "render_html", "thumbnail"]
SHEET_COLUMNS = 6
CAPTION_LINES = 3
# Fonts that cover Chinese, Japanese and Korean as well as Latin (Pillow's own font has no
# CJK glyphs: the founding prompt 卡通风格的人物 would caption as empty boxes); the first
# one installed is used. Debian: fonts-noto-cjk or fonts-wqy-zenhei.
CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/msyh.ttc",
)
CHART_W, CHART_H = 960, 200

_CSS = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:24px 0 8px}
h3{font-size:14px;font-weight:normal;margin:12px 0 4px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:128px} figure img{display:block;image-rendering:pixelated}
figcaption{font-size:11px;line-height:1.25;color:#444;overflow-wrap:anywhere}
table{border-collapse:collapse} td,th{padding:2px 10px 2px 0;text-align:left}
.bar{background:#4a7bd0;height:12px} .num{text-align:right;font-variant-numeric:tabular-nums}
svg{background:#f7f8fa}
"""


def render_html(data: RunData) -> str:
    """The whole page as one string."""
    s = data.status
    title = f"synthset report: {s['name']}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>", _summary(data),
             "<h2>Samples</h2>", _grid(data.samples), *_prompt_rows(data.prompt_rows),
             "<h2>Throughput (images/s)</h2>", throughput_svg(data.markers),
             "<h2>Shard durations (s)</h2>", durations_svg(data.markers),
             "<h2>Time by stage</h2>", _stage_table(data.stage_seconds()),
             "<h2>Failures by reason</h2>", _failure_table(data),
             *quality_sections(data.quality), "</body></html>"]
    return "\n".join(parts)


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _summary(data: RunData) -> str:
    s, spec = data.status, data.job.get("spec", {})
    rows = [("output", s["output"]), ("state", s["state"]),
            ("images", f"{s.get('images_done') or 0} of {s['images_total']} generated, "
                       f"{s.get('images_failed') or 0} failed"),
            ("shards", f"{s['shards_done']} of {s['shards_total']} committed"
                       + (f", {s['shards_failed']} failed" if s.get("shards_failed") else "")),
            ("model", f"{spec.get('model', {}).get('family')} "
                      f"{spec.get('model', {}).get('path') or '(shipped)'}"),
            ("format", spec.get("output", {}).get("format")),
            ("generated", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))]
    if s.get("repaired"):
        rows.append(("repaired", f"{len(s['repaired'])} shard(s) regenerated after they were "
                                 f"lost or damaged: {', '.join(s['repaired'][:20])}"))
    span = _span(data.markers)
    if span:
        images = sum(m["successes"] for m in data.markers)
        rows.insert(4, ("wall clock", f"{span[1] - span[0]:.1f} s for the committed shards, "
                                      f"{images / max(span[1] - span[0], 1e-9):.2f} images/s"))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _grid(samples: list[Sample]) -> str:
    if not samples:
        return "<p>No committed images yet.</p>"
    cells = "".join(_figure(sample, sample.prompt) for sample in samples)
    return f"<div class='grid'>{cells}</div>"


def _prompt_rows(rows: list[list[Sample]]) -> list[str]:
    """"One prompt, every seed": a row of images per prompt, for jobs that draw several."""
    if not rows:
        return []
    parts = ["<h2>One prompt, every seed</h2><p>The first prompts of the run, each with all "
             "the images drawn for it (one per seed): how much they vary.</p>"]
    for samples in rows:
        cells = "".join(_figure(s, f"seed #{i}") for i, s in enumerate(samples))
        parts.append(f"<h3>{_e(samples[0].prompt)}</h3><div class='grid'>{cells}</div>")
    return parts


def _figure(sample: Sample, caption: str) -> str:
    thumb = thumbnail(sample.data)
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(thumb)).decode()
    return (f"<figure><img src='{uri}' width='{thumb.width}' height='{thumb.height}' "
            f"alt='{_e(sample.key)}'><figcaption>{_e(caption)}</figcaption></figure>")


def _span(markers: list[dict]) -> tuple[float, float] | None:
    timed = [m for m in markers if m.get("start_time") and m.get("end_time")]
    if not timed:
        return None
    return min(m["start_time"] for m in timed), max(m["end_time"] for m in timed)


def throughput(markers: list[dict], bins: int = 60) -> tuple[float, list[float]]:
    """(bin width in s, images/s per bin): each shard's images spread evenly over its run."""
    span = _span(markers)
    if span is None:
        return 0.0, []
    t0, t1 = span
    width = max(t1 - t0, 1e-6) / bins
    rates = [0.0] * bins
    for m in markers:
        if not (m.get("start_time") and m.get("end_time")):
            continue
        start, end = m["start_time"], max(m["end_time"], m["start_time"] + 1e-6)
        per_s = m["successes"] / (end - start)
        for b in range(int((start - t0) / width), min(bins, int((end - t0) / width) + 1)):
            overlap = min(end, t0 + (b + 1) * width) - max(start, t0 + b * width)
            rates[b] += per_s * max(0.0, overlap) / width
    return width, rates


def throughput_svg(markers: list[dict]) -> str:
    """An area chart of images/s over the run's wall clock."""
    width, rates = throughput(markers)
    if not rates:
        return "<p>No shard timings yet.</p>"
    top = max(rates) or 1.0
    step = CHART_W / len(rates)
    points = [(i * step + step / 2, CHART_H - 20 - r / top * (CHART_H - 40))
              for i, r in enumerate(rates)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    area = f"{points[0][0]:.1f},{CHART_H - 20} {path} {points[-1][0]:.1f},{CHART_H - 20}"
    return (f"<svg width='{CHART_W}' height='{CHART_H}' role='img'>"
            f"<polygon points='{area}' fill='#c9d8f2'/>"
            f"<polyline points='{path}' fill='none' stroke='#4a7bd0' stroke-width='2'/>"
            f"<text x='4' y='14' font-size='11'>peak {top:.2f} images/s</text>"
            f"<text x='4' y='{CHART_H - 4}' font-size='11'>0 s</text>"
            f"<text x='{CHART_W - 4}' y='{CHART_H - 4}' font-size='11' text-anchor='end'>"
            f"{width * len(rates):.1f} s</text></svg>")


def durations_svg(markers: list[dict]) -> str:
    """One bar per committed shard, in shard order; hover shows the shard and seconds."""
    timed = [(m["shard_name"], m.get("duration_s") or 0.0) for m in markers]
    if not timed:
        return "<p>No committed shards yet.</p>"
    top = max(d for _, d in timed) or 1.0
    step = min(CHART_W / len(timed), 40.0)
    bars = []
    for i, (name, seconds) in enumerate(timed):
        h = max(1.0, seconds / top * (CHART_H - 30))  # a fast shard still shows
        bars.append(f"<rect x='{i * step:.2f}' y='{CHART_H - 10 - h:.1f}' "
                    f"width='{max(step - 1, 0.5):.2f}' height='{h:.1f}' fill='#4a7bd0'>"
                    f"<title>shard {_e(name)}: {seconds:.2f} s</title></rect>")
    return (f"<svg width='{CHART_W}' height='{CHART_H}' role='img'>{''.join(bars)}"
            f"<text x='4' y='14' font-size='11'>longest {top:.2f} s, {len(timed)} shards"
            "</text></svg>")


def _bar_rows(items: list[tuple[str, float]], unit: str) -> str:
    top = max((v for _, v in items), default=0) or 1.0
    return "".join(f"<tr><td>{_e(k)}</td><td class='num'>{v:,.{2 if unit == 's' else 0}f}"
                   f" {unit}</td><td><div class='bar' style='width:{300 * v / top:.0f}px'>"
                   "</div></td></tr>" for k, v in items)


def _stage_table(stages: dict[str, float]) -> str:
    if not stages:
        return "<p>No stage timings yet.</p>"
    note = ("<p>Seconds summed over shards; text encoding and uploads overlap generation, "
            "so stages add up to more than the wall clock.</p>")
    return f"<table>{_bar_rows(list(stages.items()), 's')}</table>{note}"


def _failure_table(data: RunData) -> str:
    failures = data.failures().most_common()
    s = data.status
    missing = s["shards_total"] - s["shards_done"]
    lines = [] if not missing else [f"<p>{missing} shard(s) have no marker yet "
                                    f"({s.get('shards_failed') or 0} given up on in the last "
                                    "run); a rerun generates them.</p>"]
    if not failures:
        return "".join(lines) + "<p>No failed images.</p>"
    return f"<table>{_bar_rows(failures, 'images')}</table>" + "".join(lines)


def contact_sheet(data: RunData) -> bytes:
    """A PNG grid of the sample thumbnails, each captioned with the start of its prompt."""
    font = caption_font(11)
    cell_w, line_h = THUMB + 16, 13
    cell_h = THUMB + 8 + CAPTION_LINES * line_h + 8
    rows = max(1, -(-len(data.samples) // SHEET_COLUMNS))
    sheet = Image.new("RGB", (SHEET_COLUMNS * cell_w + 16, 36 + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    s = data.status
    draw.text((8, 8), f"{s['name']}: {s.get('images_done') or 0} images, "
              f"{s.get('images_failed') or 0} failed ({s['output']})", fill="black", font=font)
    for i, sample in enumerate(data.samples):
        x, y = 8 + (i % SHEET_COLUMNS) * cell_w, 36 + (i // SHEET_COLUMNS) * cell_h
        sheet.paste(thumbnail(sample.data), (x, y))
        lines = wrap(sample.prompt, draw, font, THUMB)
        if len(lines) > CAPTION_LINES:
            lines = [*lines[:CAPTION_LINES - 1], lines[CAPTION_LINES - 1][:-3] + "..."]
        for j, line in enumerate(lines):
            draw.text((x, y + THUMB + 4 + j * line_h), line, fill="#333", font=font)
    return png_bytes(sheet)


def caption_font(size: int, candidates: tuple[str, ...] = CJK_FONTS):
    """The first installed font of ``candidates`` (any script), else Pillow's own (Latin)."""
    for path in candidates:
        if os.path.exists(path):
            try:
                return ImageFont.truetype(path, size)
            except OSError:  # unreadable or not a font: try the next
                continue
    return ImageFont.load_default(size=size)


def wrap(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> list[str]:
    """``text`` broken into lines no wider than ``width`` px (long words are cut)."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while draw.textlength(word, font=font) > width:
            cut = max(1, len(word) * width // int(draw.textlength(word, font=font) + 1))
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    return lines + ([line] if line else [])
