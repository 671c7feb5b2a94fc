"""Do layout methods bend the objects to fit their boxes? Reads the images of a layout run folder.

For every image of a ``layout`` run folder (``ait2i bench layout`` or the ``holdout/`` folder of ``ait2i tune
--suite layout``), per method: the objects the checker reads as stretched (``"rectangle"``, ``"ellipse"``: a
square or circle drawn past elongation 1.35, which no request names), as ``"other"`` (a bent or torn shape), the
mean elongation of the squares and circles it does accept (rendered ones measure 1.0-1.1), and the layout scores of
the rows (mean IoU, centre in box, clean binding). Usage::

    python benchmarks/layout_shapes.py runs/layout
    python benchmarks/layout_shapes.py runs/tune/layout-s15/holdout --out table.md
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
