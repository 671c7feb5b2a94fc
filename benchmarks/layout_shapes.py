"""Do layout methods bend the objects to fit their boxes? Reads the images of a layout run folder.

For every image of a ``layout`` run folder (``ait2i bench layout`` or the ``holdout/`` folder of ``ait2i tune
--suite layout``), per method: the objects the checker reads as stretched (``"rectangle"``, ``"ellipse"``: a
square or circle drawn past elongation 1.35, which no request names), as ``"other"`` (a bent or torn shape), the
mean elongation of the squares and circles it does accept (rendered ones measure 1.0-1.1), and the layout scores of
the rows (mean IoU, centre in box, clean binding). Usage::

    python benchmarks/layout_shapes.py runs/layout
    python benchmarks/layout_shapes.py runs/tune/layout-s15/holdout --out table.md
    python benchmarks/layout_shapes.py runs/layout --sheet corners.png --category corners --items 0,4,8 \
        --methods none,ait2i-layout

``--sheet`` also draws a contact sheet: per item, one row per method, one column per seed, each box outlined in
its object's colour, a white ``x`` where an object's centre is outside its box.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd3_read_choice import emit  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a layout run folder (rows.jsonl and the images)")
    p.add_argument("--out", default=None, help="also write the markdown table here")
    p.add_argument("--sheet", default=None, help="also draw a contact sheet (PNG) of --category/--items/--methods")
    p.add_argument("--category", default="corners")
    p.add_argument("--items", default="0,4,8", help="item indices within the category")
    p.add_argument("--methods", default=None, help="comma-separated method labels, in row order (default: all)")
    p.add_argument("--cell", type=int, default=96, help="pixels per image in the sheet")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    rows_file = folder / "rows.jsonl"
    if not rows_file.is_file():
        raise SystemExit(f"{folder}: no rows.jsonl; give a layout run folder (ait2i bench layout --out FOLDER)")
    from PIL import Image

    from ait2i.shapes.check import STRETCHED, check

    stats = defaultdict(lambda: defaultdict(list))
    for line in rows_file.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        image = np.asarray(Image.open(folder / row["image"]).convert("RGB"))
        found = [d for d in check(image) if not d.is_noise]
        s = stats[(row["method"], row["category"])]
        s["images"].append(1)
        s["stretched"].append(sum(d.shape in set(STRETCHED.values()) - {"other"} for d in found))
        s["other"].append(sum(d.shape == "other" for d in found))
        for d in found:
            if d.shape in ("square", "circle") and not d.mixed:
                x0, y0, x1, y1 = d.bbox
                s["aspect"].append(max(x1 - x0, y1 - y0) / max(1, min(x1 - x0, y1 - y0)))
        for k in ("iou", "centre_in_box", "clean_binding"):
            s[k].append(float(row[k]))

    lines = [
        f"`python benchmarks/layout_shapes.py {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
        "stretched: objects read as rectangle or ellipse (a square or circle past elongation 1.35); other: bent or "
        "torn shapes; aspect: mean bounding-box aspect (long side / short side) of the squares and circles accepted "
        "(rendered ones: 1.0-1.1).", "",
        "| method | category | images | stretched | other | aspect of squares and circles | mean IoU | centre in box "
        "| clean binding |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for (method, category), s in sorted(stats.items()):
        aspect = f"{np.mean(s['aspect']):.2f}" if s["aspect"] else "-"
        lines.append(
            f"| {method} | {category} | {len(s['images'])} | {sum(s['stretched'])} | {sum(s['other'])} | {aspect} | "
            f"{np.mean(s['iou']):.3f} | {np.mean(s['centre_in_box']):.3f} | {np.mean(s['clean_binding']):.3f} |"
        )
    emit(lines, args.out)
    if args.sheet:
        methods = args.methods.split(",") if args.methods else sorted({m for m, _ in stats})
        draw_sheet(folder, Path(args.sheet), args.category, [int(i) for i in args.items.split(",")], methods, args.cell)
        print(f"wrote {args.sheet}")
    return 0


def draw_sheet(folder: Path, path: Path, category: str, indices: list[int], methods: list[str], cell: int) -> None:
    from PIL import Image, ImageDraw

    from ait2i.bench.suites import load_suite
    from ait2i.bench.suites.layout import objects_of
    from ait2i.io import atomic_path
    from ait2i.shapes.render import COLORS

    items = {(it.category, it.index): it for it in load_suite("layout").items}
    rows = [json.loads(line) for line in (folder / "rows.jsonl").read_text().splitlines() if line.strip()]
    found = {(r["method"], r["category"], r["index"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    missing = [(m, i) for m in methods for i in indices if (m, category, i, seeds[0]) not in found]
    if missing:
        raise SystemExit(f"no images for (method, item) {missing} in {folder}")
    sheet = Image.new("RGB", (cell * len(seeds), cell * len(indices) * len(methods)), "white")
    for i, idx in enumerate(indices):
        for m, method in enumerate(methods):
            for k, seed in enumerate(seeds):
                row = found[(method, category, idx, seed)]
                im = Image.open(folder / row["image"]).convert("RGB").resize((cell, cell), Image.NEAREST)
                draw = ImageDraw.Draw(im)
                for colour, _, box in objects_of(items[(category, idx)]):
                    xy = [box.x0 * cell, box.y0 * cell, box.x1 * cell - 1, box.y1 * cell - 1]
                    draw.rectangle(xy, outline=tuple(COLORS[colour]), width=1)
                if row["centre_in_box"] < 1:
                    draw.text((2, 2), "x", fill="white")
                sheet.paste(im, (k * cell, (i * len(methods) + m) * cell))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


if __name__ == "__main__":
    raise SystemExit(main())
