"""The ``ait2i demo`` page (Gradio): prompt -> tokens and subjects -> method -> vanilla and guided side by side.

It is a layout of :mod:`ait2i.demo.core` and nothing else: every input goes through the public API, so the page
accepts and refuses what :func:`ait2i.generate` does and shows the API's own messages in its status line. One
generation runs at a time (Gradio's queue, ``concurrency_limit=1``; :func:`ait2i.generate` also locks each pipeline),
others wait in the queue; "Cancel" stops a run at its next denoising step.

Offline and private by default: bound to 127.0.0.1, no share link, Gradio's telemetry and version check off, no
run history, system fonts (no web font is fetched).
"""

from __future__ import annotations

import html
import os
import threading
import traceback

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry, no version check

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from gradio_image_annotation import image_annotator  # noqa: E402

from .. import available_methods, get_method  # noqa: E402
from . import core  # noqa: E402

DEFAULT_PROMPT = "a red circle and a blue square"
CSS = ".ait2i-error { color: #c1121f; font-weight: 600; } .ait2i-info { color: inherit; }"
CANVAS = 256  # side of the box-drawing canvas, pixels
HELP = (
    "## ait2i demo: what attention guidance does to your prompt\n"
    "Type a prompt, pick the subjects to guide (click the tokens, or accept the suggestions), choose a method and "
    "generate: the vanilla image and the guided one come from the same seed. Layout methods "
    "(`{box}`) need a box per subject: draw them on the canvas and pick the subject as each box's label."
)


def _canvas(labels: list[str]):
    """The box-drawing canvas: a blank square standing for the image, boxes labelled with the subjects."""
    blank = np.full((CANVAS, CANVAS, 3), 64, dtype=np.uint8)
    return image_annotator(
        value={"image": blank, "boxes": []},
        label_list=labels or ["(no subject)"],
        label="Boxes: one per subject (layout methods)",
        sources=[],
        show_download_button=False,
        elem_id="boxes",
    )


def _status(text: str, kind: str = "info") -> str:
    """The status line as HTML, the text escaped (messages quote tokens such as ``<|startoftext|>`` verbatim)."""
    return f'<div class="ait2i-{kind}">{html.escape(text)}</div>' if text else ""


def _error(e: BaseException) -> str:
    """The status line for an exception: bad input as the API words it; anything else as an internal error."""
    if isinstance(e, (ValueError, TypeError)):
        return _status(f"Error: {e}", "error")
    traceback.print_exc()
    why = f"Internal error ({type(e).__name__}: {e}). The page is still usable; see the server's log."
    return _status(why, "error")


class DemoApp:
    """The page and its state: the loaded pipelines and a cancel flag per browser session.

    Args:
        model (`str`, *optional*): the model selected when the page opens (``--model``); the shipped ShapesWorld
            UNet by default. The two shipped ShapesWorld models are always offered.
        device (`str`, *optional*): where the pipelines run (``cuda`` when available, else ``cpu``).
    """

    def __init__(self, model: str | None = None, device: str | None = None):
        self.model = model or core.SHIPPED_MODEL
        self.models = list(dict.fromkeys([self.model, *core.SHIPPED]))
        self.pipelines = core.Pipelines(device)
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    # -- handlers (each returns the status line instead of raising) -------------------------------------------
    def tokens(self, model: str, prompt: str, subjects: str):
        """Token table and spaCy suggestions for the prompt (suggestions fill an empty subject box only)."""
        try:
            rows = core.token_rows(self.pipelines.tokenizer(model), prompt) if prompt.strip() else []
        except Exception as e:  # noqa: BLE001 - shown in the page
            return gr.update(), gr.update(), "", _error(e)
        found, note = core.suggest_subjects(prompt)
        if found and not core.subject_lines(subjects):
            subjects = "\n".join(found)
        hint = note or (f"Suggested by spaCy: {', '.join(found)}" if found else "")
        return rows, subjects, hint, ""

    def suggest(self, prompt: str):
        found, note = core.suggest_subjects(prompt)
        return ("\n".join(found) if found else gr.update()), (note or f"Suggested by spaCy: {', '.join(found)}")

    def click_token(self, subjects: str, evt: gr.SelectData):
        """Clicking a token's row toggles its word as a subject (start and end tokens are no subjects)."""
        row = evt.row_value or []
        word = str(row[2]) if len(row) > 2 else ""
        if not word or word in ("<start>", "<end>"):
            return gr.update()
        return core.toggle_word(subjects, word)

    def relabel(self, subjects: str, annotation):
        """Keep the canvas's label list in step with the subject lines (boxes already drawn stay)."""
        labels = core.box_labels(subjects)
        boxes = (annotation or {}).get("boxes") or []
        image = (annotation or {}).get("image")
        value = {"image": image if image is not None else np.full((CANVAS, CANVAS, 3), 64, np.uint8), "boxes": boxes}
        return image_annotator(value=value, label_list=labels or ["(no subject)"])

    def preset_uploaded(self, path):
        """A preset file (TOML, ``ait2i tune``'s) sets the method and fills the panel with its values."""
        if not path:
            return gr.update(), gr.update(), gr.update(), ""
        try:
            cfg = get_method(str(path))
        except Exception as e:  # noqa: BLE001 - shown in the page
            return gr.update(), gr.update(), gr.update(), _error(e)
        note = _status(f"Preset loaded: method {cfg.name}, its values in the advanced panel.")
        return cfg.name, core.config_rows(cfg), gr.update(open=True), note

    def method_changed(self, method: str):
        try:
            rows = core.config_rows(method)
        except Exception as e:  # noqa: BLE001
            return gr.update(), gr.update(), _error(e)
        return rows, gr.update(open=get_method(method).uses_boxes), ""

    def model_changed(self, model: str, prompt: str, subjects: str):
        try:
            scale = core.default_guidance_scale(self.pipelines.get(model))
        except Exception as e:  # noqa: BLE001
            return gr.update(), gr.update(), gr.update(), gr.update(), _error(e)
        rows, subjects, hint, status = self.tokens(model, prompt, subjects)
        return scale, rows, subjects, hint, status

    def start(self, request: gr.Request):
        """Before queueing: a fresh cancel flag for this session's run."""
        with self._lock:
            self._cancel[request.session_hash] = threading.Event()
        return _status("Queued…")

    def cancel(self, request: gr.Request):
        with self._lock:
            flag = self._cancel.get(request.session_hash)
        if flag is None:
            return _status("Nothing to cancel.")
        flag.set()
        return _status("Cancelling at the next step…")

    def generate(
        self, model, prompt, subjects, annotation, method, config, seed, steps, scale, request: gr.Request,
        progress=gr.Progress(),  # noqa: B008 - Gradio's way of asking for a progress bar
    ):  # fmt: skip
        """One side-by-side run; returns every output widget's value and the status line."""
        # vanilla, guided, verdict, attention x2, loss, step slider, files, result state, status
        outputs = [None, None, "", None, None, None, gr.update(), None, None, ""]
        with self._lock:
            flag = self._cancel.get(request.session_hash) or threading.Event()
        try:
            if flag.is_set():
                raise core.Cancelled("cancelled before it started")
            cfg = core.config_from_rows(method, config.values.tolist() if hasattr(config, "values") else config)
            specs = core.subject_specs(subjects, core.drawn_boxes(annotation) if cfg.uses_boxes else None)
            req = core.Request(model, prompt, specs, cfg, _int(seed, "seed"), _int(steps, "steps"), float(scale))
            pipe = self.pipelines.get(model)
            progress(0.0, desc="starting")

            def on_step(name, step, total):
                done = step + (total if name == "vanilla" else 0)
                progress((done, 2 * total), desc=f"{name} image, step {step} of {total}")

            res = core.run(pipe, req, on_step=on_step, cancel=flag)
        except core.Cancelled as e:
            outputs[-1] = _status(f"Cancelled ({e}); nothing was kept.", "error")
            return outputs
        except Exception as e:  # noqa: BLE001 - bad input is the API's message; nothing crashes the page
            outputs[-1] = _error(e)
            return outputs
        finally:
            with self._lock:
                if self._cancel.get(request.session_hash) is flag:
                    del self._cancel[request.session_hash]
        return self._show(res)

    def _show(self, res: core.Result) -> list:
        sw = core.is_shapesworld(res.request.model)
        subjects = res.diagnostics["guided"].subjects
        vanilla = core.view(res.images["vanilla"], sw, subjects)
        guided = core.view(res.images["guided"], sw, subjects)
        verdict = "\n\n".join(core.verdict_text(k, res.verdicts[k]) for k in ("vanilla", "guided") if k in res.verdicts)
        last = res.request.steps - 1
        step = min(last, max(0, res.diagnostics["guided"].config.guided_steps(res.request.steps) - 1))
        att_v, att_g = self._attention(res, step)
        notes = "".join(f" Note: {n}." for n in res.notes)
        done = f"Done: {res.request.steps} steps, seed {res.request.seed}, method {res.diagnostics['guided'].method}."
        status = _status(done + notes)
        return [
            vanilla, guided, verdict, att_v, att_g, core.loss_image(res.diagnostics["guided"]),
            gr.update(minimum=0, maximum=last, value=step, interactive=last > 0),
            [str(res.files["vanilla"]), str(res.files["guided"])], res, status,
        ]  # fmt: skip

    def _attention(self, res: core.Result, step: int):
        return tuple(core.attention_image(res.images[k], res.diagnostics[k], step) for k in ("vanilla", "guided"))

    def step_changed(self, res, step):
        if res is None:
            return None, None
        return self._attention(res, int(step))

    # -- the page --------------------------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        methods = available_methods()
        box = ", ".join(m for m in methods if get_method(m).uses_boxes)
        with gr.Blocks(title="ait2i demo", analytics_enabled=False) as page:
            gr.Markdown(HELP.format(box=box))
            with gr.Row():
                with gr.Column(scale=2):
                    model = gr.Dropdown(self.models, value=self.model, label="Model", elem_id="model")
                    prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", elem_id="prompt")
                    tokens = gr.Dataframe(
                        headers=["index", "token", "word"], datatype=["number", "str", "str"], interactive=False,
                        label="Tokens (click one to add or remove its word as a subject)", elem_id="tokens",
                        max_height=260,
                    )  # fmt: skip
                    hint = gr.Markdown(elem_id="hint")
                    subjects = gr.Textbox(
                        label='Subjects, one per line: words of the prompt ("red circle", "cat#2"), token indices '
                        '("5,6"), optionally a box "red circle@0.1,0.1,0.5,0.5"',
                        lines=3, elem_id="subjects",
                    )  # fmt: skip
                    suggest = gr.Button("Suggest subjects (spaCy)", size="sm")
                    method = gr.Dropdown(methods, value="ait2i", label="Method", elem_id="method")
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="seed")
                        steps = gr.Number(20, label="Steps", precision=0, minimum=1, maximum=200, elem_id="steps")
                        scale = gr.Number(7.5, label="Guidance scale (CFG)", elem_id="scale")
                    with gr.Accordion("Boxes (layout methods)", open=False) as boxes_panel:
                        canvas = _canvas([])
                    with gr.Accordion("Advanced: the method's config fields", open=False) as advanced:
                        preset = gr.File(label="Preset file (.toml, from ait2i tune)", file_types=[".toml"],
                                         type="filepath", elem_id="preset")  # fmt: skip
                        config = gr.Dataframe(
                            value=core.config_rows("ait2i"), headers=["field", "value"], datatype=["str", "str"],
                            interactive=True, column_count=(2, "fixed"), elem_id="config",
                        )  # fmt: skip
                    with gr.Row():
                        go = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop = gr.Button("Cancel", variant="stop", elem_id="cancel")
                    status = gr.HTML(elem_id="status")
                with gr.Column(scale=3):
                    with gr.Row():
                        vanilla = gr.Image(label="Vanilla (same seed)", type="pil", elem_id="vanilla", format="png")
                        guided = gr.Image(label="Guided", type="pil", elem_id="guided", format="png")
                    verdict = gr.Markdown(elem_id="verdict")
                    step = gr.Slider(0, 1, value=0, step=1, label="Attention maps at step", elem_id="att-step")
                    with gr.Row():
                        att_v = gr.Image(label="Attention, vanilla", type="pil", elem_id="att-vanilla")
                        att_g = gr.Image(label="Attention, guided", type="pil", elem_id="att-guided")
                    loss = gr.Image(label="Loss terms and max attention per step", type="pil", elem_id="loss")
                    files = gr.File(label="PNGs with their parameters", file_count="multiple", elem_id="files")
            result = gr.State()

            page.load(self.tokens, [model, prompt, subjects], [tokens, subjects, hint, status])
            prompt.submit(self.tokens, [model, prompt, subjects], [tokens, subjects, hint, status])
            prompt.blur(self.tokens, [model, prompt, subjects], [tokens, subjects, hint, status])
            suggest.click(self.suggest, [prompt], [subjects, hint])
            tokens.select(self.click_token, [subjects], [subjects])
            subjects.change(self.relabel, [subjects, canvas], [canvas])
            method.input(self.method_changed, [method], [config, boxes_panel, status])
            preset.upload(self.preset_uploaded, [preset], [method, config, advanced, status])
            model.change(self.model_changed, [model, prompt, subjects], [scale, tokens, subjects, hint, status])
            outputs = [vanilla, guided, verdict, att_v, att_g, loss, step, files, result, status]
            go.click(self.start, None, [status], queue=False).then(
                self.generate, [model, prompt, subjects, canvas, method, config, seed, steps, scale], outputs,
                concurrency_limit=1, concurrency_id="generate",
            )  # fmt: skip
            stop.click(self.cancel, None, [status], queue=False)
            step.release(self.step_changed, [result, step], [att_v, att_g])
        return page


def _int(value, name: str) -> int:
    if value is None or float(value) != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def serve(model: str | None = None, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Start the page on ``host:port`` (a free port from 7860 on when ``None``).

    Args:
        model (`str`, *optional*): the model selected when the page opens (``ait2i demo --model``).
        host (`str`, *optional*, defaults to `"127.0.0.1"`): the interface to bind; only this machine by default.
        port (`int`, *optional*): the port.
        block (`bool`, *optional*, defaults to `True`): serve until interrupted (``False``: return the running
            Blocks, e.g. for tests; close it with ``.close()``).
    """
    app = DemoApp(model)
    app.pipelines.get(app.model)  # a model that cannot load is refused before the page starts
    core.suggest_subjects(DEFAULT_PROMPT)  # load spaCy now, not on the first visitor's request
    page = app.build()
    page.queue(default_concurrency_limit=1)
    # system fonts: the default theme would fetch none, but a named web font would be a request off this machine
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace"])
    page.launch(
        server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
        show_error=False, quiet=not block, footer_links=[], run_history=False, ssr_mode=False, mcp_server=False,
        pwa=False, theme=theme, css=CSS,
    )  # fmt: skip
    return page
