"""The report's quality sections: summary, score histograms, lowest-scoring samples,
duplicate groups side by side, per-prompt variety and per-attribute scene accuracy."""

from __future__ import annotations

import base64
import html

from pipeline.report.collect import Sample
from pipeline.report.images import png_bytes, thumbnail
from pipeline.report.quality import QualityData

HIST_W, HIST_H, BINS = 460, 160, 20


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def quality_sections(q: QualityData | None) -> list[str]:
    """HTML parts to append to the page; none for a job without scorers."""
    if q is None:
        return []
    return ["<h2>Quality</h2>", _summary(q),
            "<h2>Score histograms</h2>", _histograms(q),
            "<h2>Lowest-scoring samples</h2>", _figures(q.lowest, "No scores yet."),
            "<h2>Duplicate groups</h2>", _duplicates(q),
            "<h2>Variety per prompt</h2>", _variety(q),
            "<h2>Scene attributes</h2>", _labels(q)]


def _summary(q: QualityData) -> str:
    s, rows = q.summary, []
    if "accepted" in s:
        stored = (f"; {s['rejected_stored']} rejected draws stored beside them (status "
                  "'rejected', keys KEY_aN)" if "rejected_stored" in s else "")
        rows.append(("best-of-n", f"{s['accepted']} accepted, {s['not_accepted']} kept as the "
                                  f"best of their draws, {s.get('draws', 0)} draws in all{stored}"))
    if s.get("variety"):
        v = s["variety"]
        rows.append(("variety", f"mean pairwise phash distance {v['mean_phash_distance']} "
                                f"bits over {v['prompts']} prompts"))
    d = s.get("duplicates")
    if d:
        rows.append(("duplicates", f"{d['groups']} groups holding {d['images']} of {d['rows']} "
                                   f"images (Hamming <= {d['threshold']})"))
    rows.append(("read", f"score columns of {q.shards_read} shard(s)"))
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                               for k, v in rows) + "</table>"


def histogram_svg(name: str, values: list[float]) -> str:
    """Counts of ``values`` in BINS equal bins between their min and max."""
    lo, hi = min(values), max(values)
    width = (hi - lo) / BINS or 1.0
    counts = [0] * BINS
    for v in values:
        counts[min(BINS - 1, int((v - lo) / width))] += 1
    top, step = max(counts), HIST_W / BINS
    bars = "".join(f"<rect x='{i * step:.1f}' y='{HIST_H - 20 - c / top * (HIST_H - 40):.1f}' "
                   f"width='{step - 1:.1f}' height='{c / top * (HIST_H - 40):.1f}' "
                   f"fill='#4a7bd0'><title>{lo + i * width:.3f}: {c}</title></rect>"
                   for i, c in enumerate(counts))
    return (f"<svg class='hist' width='{HIST_W}' height='{HIST_H}' role='img'>{bars}"
            f"<text x='4' y='14' font-size='11'>{_e(name)}: {len(values)} images</text>"
            f"<text x='0' y='{HIST_H - 4}' font-size='11'>{lo:.3f}</text>"
            f"<text x='{HIST_W}' y='{HIST_H - 4}' font-size='11' text-anchor='end'>{hi:.3f}"
            "</text></svg>")


def _histograms(q: QualityData) -> str:
    if not q.scores:
        return "<p>No numeric scores (the phash scorer alone adds none).</p>"
    return "<div class='grid'>" + "".join(histogram_svg(c, v) for c, v in q.scores.items()) \
        + "</div>"


def _figure(sample: Sample, note: str = "") -> str:
    thumb = thumbnail(sample.data)
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(thumb)).decode()
    caption = _e(sample.prompt) + (f"<br><b>{_e(note)}</b>" if note else "")
    return (f"<figure><img src='{uri}' width='{thumb.width}' height='{thumb.height}' "
            f"alt='{_e(sample.key)}'><figcaption>{caption}</figcaption></figure>")


def _figures(items: list[tuple[Sample, str]], empty: str) -> str:
    if not items:
        return f"<p>{empty}</p>"
    return "<div class='grid'>" + "".join(_figure(s, n) for s, n in items) + "</div>"


def _duplicates(q: QualityData) -> str:
    if not q.duplicates:
        return "<p>No duplicate groups.</p>"
    rows = [f"<div class='grid dup'>{''.join(_figure(s, s.key) for s in group)}</div>"
            for group in q.duplicates]
    return "".join(rows)


def _variety(q: QualityData) -> str:
    if not q.variety:
        return "<p>One image per prompt, or no phash/clip: no variety figure.</p>"

    def cell(v) -> str:
        return f"<td class='num'>{'' if v is None else f'{v:.1f}'}</td>"
    body = "".join(f"<tr><td>{_e(p)}</td>{cell(bits)}{cell(vendi)}</tr>"
                   for p, bits, vendi in q.variety[:10])
    return ("<p>Mean pairwise phash distance (bits of 64) between a prompt's images, and "
            "the Vendi score of their CLIP embeddings (distinct images, with clip); the least "
            "varied first.</p><table><tr><th>prompt</th><th>bits</th><th>Vendi</th></tr>"
            f"{body}</table>")


def _labels(q: QualityData) -> str:
    if not q.labels:
        return "<p>No scene-grammar prompts.</p>"
    body = "".join(f"<tr><td>{_e(a)}</td><td class='num'>{right / of:.0%}</td>"
                   f"<td class='num'>{right} of {of}</td></tr>"
                   for a, (right, of) in q.labels.items())
    return ("<p>How often the drawn image shows what its prompt's label says, per "
            f"attribute (read back by the scene checker).</p><table>{body}</table>")
