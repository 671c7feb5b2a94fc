"""What the demo page does, without the page: models, token tables, subject suggestions, one side-by-side run.

Everything here calls the public API (:func:`ait2i.generate`, :func:`ait2i.available_methods`, the subject
resolver, the ShapesWorld checker, :mod:`ait2i.viz`, :func:`ait2i.io.save_png`) and the helpers the CLI uses
(model loading, ``--set`` overrides, the token table), so that the page accepts and refuses exactly what the API and
``ait2i generate`` do, with the same messages. :mod:`ait2i.demo.app` lays it out with Gradio.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from ..boxes import Box, split_box_spec
from ..io import save_png
from ..models import SHIPPED_MODEL, SHIPPED_MODELS, load_model
from ..parsing import parse_settings, parse_subject
from ..tokens import token_table

#: Models the page offers whatever ``--model`` says: the shipped ShapesWorld UNet (default) and MM-DiT.
SHIPPED = SHIPPED_MODELS
#: Side of the ShapesWorld images as the page shows them (32 px upscaled with nearest neighbour).
VIEW_SIZE = 256
#: Colours of the subjects' boxes over the results, in subject order.
BOX_COLOURS = ("#ffffff", "#ff9f1c", "#2ec4b6", "#e71d36", "#a06cd5", "#f4d35e")


class Cancelled(Exception):
    """Raised inside the pipeline's step callback when the user cancels the run."""


def is_shapesworld(model: str) -> bool:
    """Whether ``model`` names a shipped ShapesWorld model (the checker reads its images; shown upscaled)."""
    return model in SHIPPED and not Path(model).exists()


class Pipelines:
    """The loaded pipelines, by model name, each loaded once (:func:`ait2i.models.load_model`: same loader as the CLI).

    Args:
        device (`str`, *optional*): ``"cuda"`` when available, else ``"cpu"``.
    """

    def __init__(self, device: str | None = None):
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._pipes: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, model: str):
        """The pipeline of ``model`` (loading it on first use); `ValueError` with the CLI's message if it cannot."""
        with self._lock:
            if model not in self._pipes:
                pipe = load_model(None if model == SHIPPED_MODEL else model)
                pipe.to(self.device)
                pipe.set_progress_bar_config(disable=True)
                self._pipes[model] = pipe
            return self._pipes[model]

    def tokenizer(self, model: str):
        """The tokenizer the subjects of ``model`` resolve on."""
        from ..hosts import host_for

        pipe = self.get(model)
        return host_for(pipe).subject_tokenizer(pipe)


def default_guidance_scale(pipe) -> float:
    """The pipeline's own default classifier-free guidance scale (7.5 for SD 1.x, 7.0 for SD3), as the CLI."""
    default = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    return float(default.default) if default is not None else 7.5


def token_rows(tokenizer, prompt: str) -> list[list]:
    """``[index, token, word]`` per token the text encoder sees (the table of ``ait2i tokens``)."""
    return [[i, t, w] for i, t, w in token_table(tokenizer, prompt)]


def suggest_subjects(prompt: str) -> tuple[list[str], str]:
    """Subjects proposed from spaCy's noun chunks as the benchmarks build them (:func:`ait2i.bench.chunks.
    subjects_of`), and a note for the page: empty when it worked, else why there is no suggestion."""
    from ..bench.chunks import subjects_of

    if not prompt.strip():
        return [], ""
    try:
        found = list(subjects_of(prompt))
    except ValueError as e:  # spaCy or its English model is not installed
        return [], f"No subject suggestions: {e}. Name the subjects yourself (click tokens or type them)."
    if not found:
        return [], "spaCy found no noun chunk to suggest; name the subjects yourself."
    return found, ""


def toggle_word(subjects_text: str, word: str) -> str:
    """Add ``word`` as a subject line, or remove the line if it is already there (clicking a token)."""
    lines = [ln.strip() for ln in subjects_text.splitlines() if ln.strip()]
    if word in lines:
        lines.remove(word)
    else:
        lines.append(word)
    return "\n".join(lines)


def subject_lines(subjects_text: str) -> list[str]:
    """The subject lines of the page's text box (one subject per line, blank lines ignored)."""
    return [ln.strip() for ln in (subjects_text or "").splitlines() if ln.strip()]


def box_labels(subjects_text: str) -> list[str]:
    """What the canvas offers as box labels: each subject line without a typed ``@box``."""
    return [ln.partition("@")[0].strip() for ln in subject_lines(subjects_text)]


def drawn_boxes(annotation: dict | None) -> dict[str, Box]:
    """The boxes drawn on the canvas, ``{subject line: normalised Box}``.

    Args:
        annotation (`dict`, *optional*): the annotator's value: ``{"image": (H, W, 3) array, "boxes": [{"label",
            "xmin", "ymin", "xmax", "ymax"}, ...]}`` in canvas pixels.

    Raises:
        ValueError: a box without a subject label, or two boxes for one subject.
    """
    if not annotation or not annotation.get("boxes"):
        return {}
    image = annotation.get("image")
    h, w = (image.shape[0], image.shape[1]) if hasattr(image, "shape") else (image.height, image.width)
    out: dict[str, Box] = {}
    for b in annotation["boxes"]:
        label = str(b.get("label") or "").strip()
        if not label:
            raise ValueError("a drawn box has no subject; pick the subject it belongs to from the box's label list")
        if label in out:
            raise ValueError(f"two boxes are drawn for subject {label!r}; a subject has one box")
        # The canvas keeps boxes inside the image; the Box itself refuses anything else.
        out[label] = Box(b["xmin"] / w, b["ymin"] / h, b["xmax"] / w, b["ymax"] / h)
    return out


def subject_specs(subjects_text: str, boxes: dict[str, Box] | None = None) -> list:
    """The subjects as :func:`ait2i.generate` takes them: phrases (``"red car"``, ``"cat#2"``, with a typed or
    drawn box as ``"phrase@x0,y0,x1,y1"``) or token indices (``"5"``, ``"5,6"``, as the CLI's ``--subjects``).

    Raises:
        ValueError: a drawn box for a line that is not a subject, or a subject with both a typed and a drawn box.
    """
    lines = subject_lines(subjects_text)
    boxes = dict(boxes or {})
    unknown = sorted(set(boxes) - set(box_labels(subjects_text)))
    if unknown:
        raise ValueError(f"boxes are drawn for {unknown}, which are not among the subjects {lines}")
    specs: list = []
    for line in lines:
        spec = parse_subject(line)
        box = boxes.get(line.partition("@")[0].strip())
        if box is None:
            specs.append(spec)
        elif isinstance(spec, list):
            specs.append({"tokens": spec, "box": box})
        elif "@" in spec:
            raise ValueError(f"subject {line!r} has a typed box and a drawn box; keep one")
        else:
            specs.append(f"{spec}@{box}")
    return specs


def without_boxes(specs: Sequence) -> list:
    """The same subjects without their boxes (the vanilla run records their maps; ``"none"`` reads no boxes)."""
    out = []
    for s in specs:
        if isinstance(s, str):
            out.append(split_box_spec(s)[0])
        elif isinstance(s, dict):
            out.append({k: v for k, v in s.items() if k != "box"})
        else:
            out.append(s)
    return out


def config_rows(method) -> list[list[str]]:
    """``[field, value]`` per field of a method's config (a registered name, a preset file or a config object): the
    advanced panel, values as Python literals."""
    from ..methods import get_method

    cfg = get_method(method)
    return [[f.name, repr(getattr(cfg, f.name))] for f in dataclasses.fields(cfg) if f.name != "name"]


def config_from_rows(method: str, rows: Sequence[Sequence]) -> object:
    """The method's config with the panel's values applied, read as ``--set FIELD=VALUE`` is (by the field's type);
    unknown fields and bad values are refused with the parser's or the config's own `ValueError`."""
    from ..methods import get_method

    cfg = get_method(method)
    items = [f"{r[0]}={r[1]}" for r in rows or [] if r and str(r[0]).strip()]
    overrides = parse_settings(cfg, items, option="advanced field")
    return cfg.replace(**overrides) if overrides else cfg


_WORD = re.compile(r"[a-z]+")


def requested_objects(prompt: str) -> list[tuple[str, str]]:
    """The ``(colour, shape)`` pairs a ShapesWorld prompt asks for ("a red circle and a blue square"), in order."""
    from ..shapes.render import ALL_SHAPES, COLORS

    words = _WORD.findall(prompt.lower())
    return [(a, b) for a, b in zip(words, words[1:]) if a in COLORS and b in ALL_SHAPES]


def verdict(image, prompt: str) -> dict:
    """The ShapesWorld checker's reading of one image against the prompt's objects.

    Returns:
        `dict`: ``found`` (``"red circle"`` per detected object, noise left out), and when the prompt names coloured
        shapes ``requested`` and the checker's :func:`~ait2i.shapes.check.match` (``all_present``,
        ``clean_binding``, ...).
    """
    from ..shapes.check import check, match

    found = check(image)
    objects = [d for d in found if not d.is_noise]
    out = {"found": [f"{d.color} {d.shape}" + (f" (+{'/'.join(d.leaked_colors)})" if d.mixed else "") for d in objects]}
    requested = requested_objects(prompt)
    if requested:
        out["requested"] = [f"{c} {s}" for c, s in requested]
        out.update(match(found, requested))
    return out


def verdict_text(name: str, v: dict) -> str:
    """One Markdown line of a :func:`verdict`."""
    found = ", ".join(v["found"]) or "nothing"
    if "requested" not in v:
        return f"**{name}**: found {found} (the prompt names no coloured shape, so binding is not judged)"
    yes = "yes" if v["clean_binding"] else "no"
    return (
        f"**{name}**: found {found}; requested {', '.join(v['requested'])}: "
        f"{v['present']}/{v['num_requested']} present, clean binding: **{yes}**"
    )


def view(image: Image.Image, shapesworld: bool, subjects: Sequence = ()) -> Image.Image:
    """The image as the page shows it: ShapesWorld's 32 px upscaled with nearest neighbour, each subject's box
    drawn over it (the API's normalised boxes, in the colour of :data:`BOX_COLOURS`)."""
    out = image.convert("RGB")
    if shapesworld:
        scale = max(1, VIEW_SIZE // max(out.size))
        out = out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)
    boxed = [s for s in subjects if getattr(s, "box", None) is not None]
    if boxed:
        draw = ImageDraw.Draw(out)
        w, h = out.size
        for k, s in enumerate(subjects):
            if s.box is None:
                continue
            x0, y0, x1, y1 = s.box.as_tuple()
            colour = BOX_COLOURS[k % len(BOX_COLOURS)]
            draw.rectangle([x0 * w, y0 * h, x1 * w - 1, y1 * h - 1], outline=colour, width=max(1, w // 128))
            draw.text((x0 * w + 3, y0 * h + 2), s.label, fill=colour)
    return out


def figure_image(fig, dpi: int = 90) -> Image.Image:
    """A matplotlib figure drawn to a PIL image."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def attention_image(image, diagnostics, step: int) -> Image.Image | None:
    """Each subject's attention map at ``step`` over the image (:func:`ait2i.viz.attention_figure`); ``None`` when
    no map was recorded at that step."""
    from ..viz import attention_figure

    maps = diagnostics.maps
    if step not in maps:
        return None
    labels = [s.label for s in diagnostics.subjects]
    return figure_image(attention_figure(image, {step: maps[step][0]}, labels, panel_size=1.8))


def loss_image(diagnostics) -> Image.Image:
    """The loss terms and each subject's maximum attention per step (:func:`ait2i.viz.loss_plot`)."""
    from ..viz import loss_plot

    return figure_image(loss_plot(diagnostics))


@dataclass
class Request:
    """One side-by-side run as the page asks for it (the values of its widgets)."""

    model: str
    prompt: str
    subjects: list
    method: object  # a GuidanceConfig (the panel's values applied)
    seed: int
    steps: int
    guidance_scale: float

    def __post_init__(self):
        if not self.prompt.strip():
            raise ValueError("the prompt is empty; type a prompt")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")


@dataclass
class Result:
    """Vanilla and guided images of one seed, their diagnostics, checker verdicts and the saved PNGs."""

    request: Request
    images: dict[str, Image.Image]  # "vanilla" / "guided" -> the pipeline's image
    diagnostics: dict[str, object]  # "vanilla" / "guided" -> ait2i Diagnostics
    verdicts: dict[str, dict] = field(default_factory=dict)  # ShapesWorld only
    files: dict[str, Path] = field(default_factory=dict)  # "vanilla" / "guided" -> PNG with parameters
    notes: list[str] = field(default_factory=list)


def run(
    pipe,
    request: Request,
    out_dir: str | Path | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> Result:
    """Generate the guided image and the vanilla one from the same seed, with every step's attention maps.

    The guided run goes first: bad subjects, boxes or pipelines are refused by :func:`ait2i.generate` (its own
    `ValueError`/`TypeError`) before any work. Each image is saved as a PNG carrying its parameters in
    ``out_dir`` (a new temporary folder by default).

    Args:
        pipe: the loaded pipeline of ``request.model``.
        request (`Request`): what to generate.
        out_dir (`str` or `Path`, *optional*): where the PNGs go.
        on_step (`callable`, *optional*): ``on_step(run, step, num_steps)`` after each denoising step
            (``run`` is ``"guided"`` or ``"vanilla"``).
        cancel (`threading.Event`, *optional*): set it to stop at the next step (:class:`Cancelled` is raised).
    """
    import torch

    import ait2i

    from .. import __version__

    r = request
    record = tuple(range(r.steps))

    def callback(name):
        def cb(_pipe, step, _t, kwargs):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled at step {step + 1} of {r.steps} ({name} image)")
            if on_step is not None:
                on_step(name, step + 1, r.steps)
            return kwargs

        return cb

    images, diags = {}, {}
    for name, method, subjects in (("guided", r.method, r.subjects), ("vanilla", "none", without_boxes(r.subjects))):
        out = ait2i.generate(
            pipe, r.prompt, subjects=subjects, method=method, record_maps=record,
            generator=torch.Generator("cpu").manual_seed(r.seed), num_inference_steps=r.steps,
            guidance_scale=r.guidance_scale, callback_on_step_end=callback(name),
        )  # fmt: skip
        images[name], diags[name] = out.images[0], out.diagnostics
    result = Result(r, images, diags, notes=list(diags["guided"].notes))
    if is_shapesworld(r.model):
        result.verdicts = {k: verdict(im, r.prompt) for k, im in images.items()}
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="ait2i-demo-"))
    params = {
        "prompt": r.prompt,
        "subjects": [s if isinstance(s, str) else str(s) for s in r.subjects],
        "steps": r.steps,
        "guidance_scale": r.guidance_scale,
        "seed": r.seed,
        "model": r.model,
        "scheduler": type(pipe.scheduler).__name__,
        "ait2i_version": __version__,
        "source": "ait2i demo",
    }

    for name, im in images.items():
        d = diags[name]
        method_params = {
            "method": d.method,
            "method_config": {f.name: getattr(d.config, f.name) for f in dataclasses.fields(d.config)},
        }
        path = folder / f"{name}-seed{r.seed}.png"
        extra = {"height": im.height, "width": im.width, "subject_tokens": [s.to_dict() for s in d.subjects]}
        result.files[name] = save_png(im, path, {**params, **method_params, **extra})
    return result
