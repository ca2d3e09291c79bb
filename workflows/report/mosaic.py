"""The frames themselves in the report: each frame as a PNG (full size, and a thumbnail), a
mosaic that places them at their stage positions to scale (label colour, route mark, a click
opens the frame), and a per-frame table. Plain HTML and CSS, no script."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex
from PIL import Image

from agent.policy import UNKNOWN
from instruments.session_file.decision_record import DecisionRecord
from instruments.session_file.decision_row import DecisionRow
from instruments.utils import atomic_file
from instruments.utils.image8 import to_uint8
from workflows.report.format import MISSING, number, with_unit
from workflows.report.overview_map import Underlay

THUMB_PX = 96
FULL_PX = 1024                   # frames larger than this are stored downsampled
CANVAS_PX = 960                  # the mosaic's longer side on the page
UNKNOWN_COLOUR = "#262626"
NO_LABEL_COLOUR = "#b3b3b3"
# one mark per route (confident frames carry none)
ROUTE_MARKS = {"confident": "", "rescan": "R", "adjudicated": "A", "contested": "×",
               "human": "H", "unknown": "?", "unresolved": "!", "quality_failed": "Q",
               "relooked": "L", "zoomed_out": "Z", "neighbourhood": "N"}
ROUTE_WORDS = {"confident": "confident", "rescan": "rescanned", "adjudicated": "adjudicated",
               "contested": "contested (classifier overruled the adjudicator)",
               "human": "decided by a human", "unknown": "unknown (unlike every class)",
               "unresolved": "unresolved", "quality_failed": "poor quality",
               "relooked": "decided with looks at shifted centres",
               "zoomed_out": "decided with a wider field",
               "neighbourhood": "decided with its region's frames"}


@dataclass(frozen=True)
class FrameImages:
    """Where a frame's PNGs are, relative to the page."""

    full: str
    thumb: str


def write_frame_images(index: int, image: np.ndarray, out: Path) -> FrameImages:
    """The frame as a PNG (at most FULL_PX a side) and a THUMB_PX thumbnail, under `out`."""
    pixels = to_uint8(image)
    names = FrameImages(f"frames/frame_{index:04d}.png", f"frames/thumb_{index:04d}.png")
    for name, side in ((names.full, FULL_PX), (names.thumb, THUMB_PX)):
        picture = Image.fromarray(pixels)
        if max(picture.size) > side:
            picture.thumbnail((side, side), Image.Resampling.LANCZOS)
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file.atomic_path(path) as tmp:
            picture.save(tmp, format="PNG")
    return names


def colours(classes: list[str]) -> dict[str, str]:
    """A palette colour per class (hex); unknown (no class) always near-black."""
    named = [name for name in classes if name != UNKNOWN]
    cmap = colormaps["tab10" if len(named) <= 10 else "tab20"]
    return {**{name: to_hex(cmap(i % cmap.N)) for i, name in enumerate(named)},
            UNKNOWN: UNKNOWN_COLOUR}


@dataclass(frozen=True)
class Placement:
    """Where the frames lie: centres and sides in one unit (metres, or tiles)."""

    centres: dict[int, tuple[float, float]]
    sides: dict[int, float]
    unit: str                     # "m" or "tile"


def placement(rows: list[DecisionRow]) -> Placement | None:
    """Stage positions and fields of view where the frames carry distinct ones, else the
    survey's tile grid, else None."""
    placed = [r for r in rows if r.x is not None and r.y is not None]
    fovs = [r.fov for r in placed if r.fov]
    if len({(r.x, r.y) for r in placed}) >= 2 and fovs:
        typical = float(np.median(fovs))
        return Placement({r.index: (r.x, r.y) for r in placed},
                         {r.index: r.fov or typical for r in placed}, "m")
    tiled = [r for r in rows if r.tile is not None]
    if len({r.tile for r in tiled}) >= 2:
        # a tile's row counts down the page as an image's does; the mosaic draws y upwards
        return Placement({r.index: (r.tile[1], -r.tile[0]) for r in tiled},
                         dict.fromkeys((r.index for r in tiled), 1.0), "tile")
    return None


def _scale_bar(extent: float, unit: str) -> tuple[float, str]:
    """A round length near a fifth of the extent, and its label."""
    target = extent / 5
    power = 10 ** math.floor(math.log10(target))
    length = max(step * power for step in (1, 2, 5) if step * power <= target)
    label = with_unit(length, "m") if unit == "m" else f"{number(length)} tile(s)"
    return length, label


def mosaic_html(rows: list[DecisionRow], images: dict[int, FrameImages],
                palette: dict[str, str], underlay: Underlay | None = None) -> str | None:
    """The frames at their positions, to scale, or None where they have no positions; with
    an `underlay` (the session's overview, stage positions in m) drawn under them."""
    where = placement(rows)
    if where is None:
        return None
    boxes = {i: (cx - where.sides[i] / 2, cy - where.sides[i] / 2, where.sides[i])
             for i, (cx, cy) in where.centres.items()}
    under = underlay if where.unit == "m" else None
    lows = [(b[0], b[1]) for b in boxes.values()] + ([(under.x0, under.y0)] if under else [])
    highs = [(b[0] + b[2], b[1] + b[2]) for b in boxes.values()] + (
        [(under.x0 + under.width, under.y0 + under.height)] if under else [])
    x0, y0 = min(p[0] for p in lows), min(p[1] for p in lows)
    width = max(p[0] for p in highs) - x0
    height = max(p[1] for p in highs) - y0
    scale = CANVAS_PX / max(width, height)           # pixels per unit, one for both axes
    canvas_w, canvas_h = width * scale, height * scale
    tiles = [] if under is None else [
        f'<img class="underlay" src="{under.src}" alt="overview" style="position:absolute;'
        f'left:{(under.x0 - x0) * scale:.2f}px;'
        f'top:{(y0 + height - under.y0 - under.height) * scale:.2f}px;'
        f'width:{under.width * scale:.2f}px;height:{under.height * scale:.2f}px">']
    for row in rows:
        if row.index not in boxes:
            continue
        left, bottom, side = boxes[row.index]
        px = side * scale
        colour = palette.get(row.label or "", NO_LABEL_COLOUR)
        mark = ROUTE_MARKS.get(row.route or "", "")
        title = (f"#{row.sequence if row.sequence is not None else row.index} "
                 f"{row.label or 'no label'}, {ROUTE_WORDS.get(row.route or '', 'no route')}"
                 + (f", confidence {row.confidence:.2f}" if row.confidence is not None else ""))
        tiles.append(
            f'<a class="tile" href="{images[row.index].full}" target="_blank" '
            f'data-index="{row.index}" title="{html.escape(title)}" style="'
            f'left:{(left - x0) * scale:.2f}px;top:{(y0 + height - bottom - side) * scale:.2f}px;'
            f'width:{px:.2f}px;height:{px:.2f}px;border-color:{colour};'
            f'border-width:{1 if px < 30 else 3}px">'
            f'<img src="{images[row.index].thumb}" alt="">'
            + (f'<span class="mark">{html.escape(mark)}</span>' if mark else "") + "</a>")
    length, label = _scale_bar(width, where.unit)
    span = (f"{with_unit(width, 'm')} × {with_unit(height, 'm')}" if where.unit == "m"
            else f"{number(width)} × {number(height)} tiles")
    drawn = len(tiles) - (under is not None)
    return (f'<p>{drawn} frames over {span}, drawn to scale; each frame opens on a click. '
            + ("The session's overview lies under them. " if under else "")
            + ("" if where.unit == "m" else "The frames carry no stage positions: they are "
               "placed on their survey tile grid. ")
            + f'</p><div class="mosaic" data-unit="{where.unit}" '
            f'style="width:{canvas_w:.1f}px;height:{canvas_h:.1f}px">'
            + "".join(tiles) + "</div>"
            + f'<div class="scalebar" style="width:{length * scale:.1f}px">{label}</div>'
            + _legend(rows, palette))


def _legend(rows: list[DecisionRow], palette: dict[str, str]) -> str:
    """The label colours and route marks that appear in the session, and only those."""
    labels = [name for name in palette if any(r.label == name for r in rows)]
    if any(r.label is None for r in rows):
        labels.append("")
    routes = [route for route in ROUTE_MARKS if ROUTE_MARKS[route]
              and any(r.route == route for r in rows)]
    chips = "".join(f'<span class="chip"><i style="background:'
                    f'{palette.get(name, NO_LABEL_COLOUR)}"></i>'
                    f'{html.escape(name or "no label (skipped)")}</span>' for name in labels)
    marks = "".join(f'<span class="chip"><b class="mark">{html.escape(ROUTE_MARKS[route])}</b>'
                    f'{html.escape(ROUTE_WORDS[route])}</span>' for route in routes)
    return f'<div class="legend">{chips}</div><div class="legend">{marks}</div>'


def quality_text(record: DecisionRecord) -> str:
    """Sharpness and SNR, and what failed where the frame stayed poor."""
    quality = record.quality
    if quality is None:
        return MISSING
    parts = [f"{name} {number(v, 2)}" for name, v in (("sharpness", quality.sharpness),
                                                       ("SNR", quality.snr))
             if v is not None and math.isfinite(v)]
    if quality.ok is False:
        parts.append("poor: " + (", ".join(quality.failures) or "failed"))
    return "; ".join(parts) or MISSING


def frame_table(rows: list[DecisionRow], records: list[DecisionRecord],
                images: dict[int, FrameImages], palette: dict[str, str]) -> str:
    """One line per frame: index, thumbnail, label, route, confidence, quality, human."""
    lines = []
    for row, record in zip(rows, records, strict=True):
        human = (f"{row.human.decision.value} by {row.human.operator}" if row.human else "")
        truth = "" if not row.truth else (
            ' <span class="ok">✓</span>' if row.truth == row.label
            else f' <span class="bad">✗ truth {html.escape(row.truth)}</span>')
        colour = palette.get(row.label or "", NO_LABEL_COLOUR)
        cells = [
            str(row.sequence if row.sequence is not None else row.index),
            f'<a href="{images[row.index].full}" target="_blank">'
            f'<img class="thumb" src="{images[row.index].thumb}" alt="frame {row.index}"></a>',
            f'<i class="swatch" style="background:{colour}"></i>'
            f'{html.escape(row.label or "no label")}{truth}',
            html.escape(ROUTE_WORDS.get(row.route or "", "no route")),
            MISSING if row.confidence is None else f"{row.confidence:.2f}",
            html.escape(quality_text(record)), html.escape(human)]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("frame", "image", "label", "route", "confidence",
                                             "quality", "human"))
    return f'<table class="frames"><tr>{head}</tr>{"".join(lines)}</table>'
