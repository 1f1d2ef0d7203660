"""Pictures of an evaluation: an image grid (rows prompts, columns plans) and a plot of
prompt adherence against speedup, drawn with pillow (no plotting library needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_grid(path: Path, rows: list[list[np.ndarray]], row_labels: list[str], col_labels: list[str],
               zoom: int = 4) -> None:
    """PNG grid: rows[i][j] is prompt i under plan j, each image scaled by `zoom` (nearest)."""
    from PIL import Image, ImageDraw

    h, w = rows[0][0].shape[:2]
    cell_w, cell_h = w * zoom, h * zoom
    left, top, pad = 8, 18, 4
    label_h = 14
    width = left + len(col_labels) * (cell_w + pad)
    height = top + len(rows) * (cell_h + label_h + pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(col_labels):
        draw.text((left + j * (cell_w + pad), 2), name, fill="black")
    for i, row in enumerate(rows):
        y = top + i * (cell_h + label_h + pad)
        draw.text((left, y), row_labels[i][:70], fill="black")
        for j, img in enumerate(row):
            tile = Image.fromarray(img).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (left + j * (cell_w + pad), y + label_h))
    canvas.save(path)


def write_plot(path: Path, points: list[tuple[str, float, float]], y_label: str = "adherence (overall)") -> None:
    """Scatter of (plan, speedup, y) with labelled points; axes from 0 to the data's maxima."""
    from PIL import Image, ImageDraw

    W, H, m = 520, 380, 50
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xmax = max(1.0, max(p[1] for p in points)) * 1.15
    ymax = 1.0 if all(0 <= p[2] <= 1 for p in points) else max(p[2] for p in points) * 1.15
    sx = lambda x: m + (W - 2 * m) * x / xmax  # noqa: E731
    sy = lambda y: H - m - (H - 2 * m) * y / ymax  # noqa: E731
    d.line((m, H - m, W - m, H - m), fill="black")
    d.line((m, m, m, H - m), fill="black")
    for k in range(6):
        x = xmax * k / 5
        d.line((sx(x), H - m, sx(x), H - m + 4), fill="black")
        d.text((sx(x) - 8, H - m + 6), f"{x:.1f}", fill="black")
        y = ymax * k / 5
        d.line((m - 4, sy(y), m, sy(y)), fill="black")
        d.text((4, sy(y) - 6), f"{y:.2f}", fill="black")
    d.text((W / 2 - 60, H - 18), "speedup over exact (x)", fill="black")
    d.text((m, 8), y_label + " vs speedup", fill="black")
    for name, x, y in points:
        d.ellipse((sx(x) - 4, sy(y) - 4, sx(x) + 4, sy(y) + 4), fill=(200, 40, 40))
        d.text((sx(x) + 6, sy(y) - 6), name, fill="black")
    img.save(path)
