"""``synthset report``: a run's markers and sample images, as one HTML page and a PNG sheet."""

from __future__ import annotations

import logging
import os
import posixpath

from pipeline.output.layout import REPORT_HTML, REPORT_PNG
from pipeline.output.storage import OutputFolder
from pipeline.report.collect import collect
from pipeline.report.quality import collect_quality
from pipeline.report.render import contact_sheet, render_html

log = logging.getLogger("synthset")


def report_targets(folder: OutputFolder, out: str | None,
                   storage_options: dict | None) -> tuple[OutputFolder, str, str]:
    """Where the page and the sheet go: the output itself, or ``out`` and ``out``'s .png."""
    if not out:
        return folder, REPORT_HTML, REPORT_PNG
    remote = "://" in out and not out.startswith("file://")
    parent, base = posixpath.split(out) if remote else os.path.split(os.path.abspath(out))
    stem = base[:-5] if base.endswith(".html") else base
    return OutputFolder(parent, storage_options if remote else None), base, f"{stem}.png"


def write_report(folder: OutputFolder, out: str | None = None,
                 storage_options: dict | None = None) -> tuple[str, str]:
    """Write the HTML page and the PNG contact sheet; returns where they went."""
    data = collect(folder)
    data.quality = collect_quality(folder, data)
    target, html_name, png_name = report_targets(folder, out, storage_options)
    target.write_bytes(html_name, render_html(data).encode())
    target.write_bytes(png_name, contact_sheet(data))
    log.info("report of %s: %d shards, %d samples", folder.display(), len(data.markers),
             len(data.samples))
    return target.display(html_name), target.display(png_name)
