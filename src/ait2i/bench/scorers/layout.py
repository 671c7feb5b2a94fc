"""The layout scorer: are the requested objects in their boxes? Read by the ShapesWorld checker.

Per image and requested object ``(colour, shape, box)``: among the detected objects of that colour and shape
(not mixed, not noise), the one with the best IoU against the box; its IoU (0 when there is none) and whether its
centre falls in the box. Per image: the mean IoU, the fraction of objects whose centre is in their box, whether
all are (``all_in_box``), and the checker's exact and clean binding (:func:`ait2i.shapes.check.match`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...boxes import xyxy_iou
from ...shapes.check import check, match
from ..suites.layout import objects_of

#: Row keys, the headline first.
KEYS = ("iou", "centre_in_box", "all_in_box", "exact_binding", "clean_binding")


def score_boxes(image, objects: Sequence, found=None) -> dict:
    """Box and binding scores of one image for ``objects`` = ``[(colour, shape, Box), ...]``.

    Args:
        image: the generated image (PIL or an ``(H, W, 3)`` array); pixel boxes are normalised by its size.
        objects: the requested objects with their boxes (normalised, origin top-left).
        found (*optional*): the checker's detections, if already computed.
    """
    if found is None:
        found = [d for d in check(image) if not d.is_noise]
    if isinstance(getattr(image, "size", None), tuple):  # PIL: (width, height)
        w, h = image.size
    else:
        w, h = np.asarray(image).shape[1], np.asarray(image).shape[0]
    ious, inside = [], []
    for color, shape, box in objects:
        best_iou, best_in = 0.0, False
        for d in found:
            if d.mixed or (d.color, d.shape) != (color, shape):
                continue
            x0, y0, x1, y1 = d.bbox[0] / w, d.bbox[1] / h, d.bbox[2] / w, d.bbox[3] / h
            iou = xyxy_iou((x0, y0, x1, y1), box.as_tuple())
            if iou > best_iou or (best_iou == 0.0 and not best_in):
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                best_iou, best_in = max(iou, best_iou), box.x0 <= cx <= box.x1 and box.y0 <= cy <= box.y1
        ious.append(best_iou)
        inside.append(best_in)
    m = match(found, [(c, s) for c, s, _ in objects])
    return {
        "iou": float(np.mean(ious)),
        "centre_in_box": float(np.mean(inside)),
        "all_in_box": float(all(inside)),
        "exact_binding": float(m["exact_binding"]),
        "clean_binding": float(m["clean_binding"]),
    }


def score_layout(image, item) -> dict:
    """:func:`score_boxes` for a layout item (a :class:`~ait2i.bench.suites.layout.LayoutItem` or a runner item
    of the ``layout`` suite)."""
    return score_boxes(image, objects_of(item))


class LayoutScorer:
    """The runner's scorer of the ``layout`` suite (:func:`score_layout` per image)."""

    name, keys = "layout", KEYS
    #: summaries read every image again (:func:`~ait2i.bench.runner.rescore_rows`): cheap and deterministic
    rescore = True

    def score(self, images, item) -> list[dict]:
        return [score_layout(im, item) for im in images]

    def info(self) -> dict:
        return {"model": "ait2i.shapes.check (deterministic)", "boxes": "best-IoU detection of each object's kind"}
