"""The loss terms of every built-in method: pure functions of float32 tensors, no method config imported.

- :mod:`~ait2i.losses.maps`: a capture's checks, the subject maps, the Attend-and-Excite view, smoothing, maxima,
  centroids;
- :mod:`~ait2i.losses.ait2i`: AI-T2I's aggregation, attribute binding, isolation and presence;
- :mod:`~ait2i.losses.attend_excite`: Attend-and-Excite;
- :mod:`~ait2i.losses.boxes`: the box terms (layout guidance, BoxDiff, AI-T2I with boxes).

The methods (:mod:`ait2i.methods`) combine them with their configs' settings.
"""

from .ait2i import (
    REFERENCE_RES,
    aggregation_loss,
    ait2i_terms,
    attribute_loss,
    disc_mask,
    isolation_loss,
    nms_regions,
    presence_loss,
)
from .attend_excite import attend_excite_loss
from .boxes import (
    box_aggregation_loss,
    box_isolation_loss,
    boxdiff_corner_loss,
    boxdiff_inner_loss,
    boxdiff_outer_loss,
    layout_guidance_loss,
)
from .maps import (
    ane_view,
    centroid,
    check_subjects,
    gaussian_kernel,
    gaussian_smooth,
    group_maps,
    max_attention,
    nan_if_nonfinite,
    subject_max_attention,
)

__all__ = [
    "REFERENCE_RES",
    "aggregation_loss",
    "ait2i_terms",
    "ane_view",
    "attend_excite_loss",
    "attribute_loss",
    "box_aggregation_loss",
    "box_isolation_loss",
    "boxdiff_corner_loss",
    "boxdiff_inner_loss",
    "boxdiff_outer_loss",
    "centroid",
    "check_subjects",
    "disc_mask",
    "gaussian_kernel",
    "gaussian_smooth",
    "group_maps",
    "isolation_loss",
    "layout_guidance_loss",
    "max_attention",
    "nan_if_nonfinite",
    "nms_regions",
    "presence_loss",
    "subject_max_attention",
]
