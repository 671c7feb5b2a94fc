"""``ait2i demo``: the page's logic on the shipped ShapesWorld model, the CLI's refusal, and the page itself in a real
headless browser (Debian's chromium driven by selenium).

The browser test is marked slow. It skips when chromium, chromedriver, selenium or the demo extra is missing, except
when ``AIT2I_REQUIRE_BROWSER=1`` (set by ``.ci/run``): then a missing piece is a failure, never a skip.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ait2i
from ait2i import cli
from ait2i.demo import core
from ait2i.io import read_png_params

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "images" / "demo.png"
PROMPT = "a green triangle and a purple circle"


# -- the page's logic, no browser ------------------------------------------------------------------------------------
def test_token_rows_are_the_cli_table():
    tok = core.Pipelines("cpu").tokenizer("shapesworld")
    rows = core.token_rows(tok, PROMPT)
    assert rows[0] == [0, "<|startoftext|>", "<start>"] and rows[-1][2] == "<end>"
    assert [r[2] for r in rows[1:-1]] == ["a", "green", "triangle", "and", "a", "purple", "circle"]


def test_suggestions_are_the_benchmark_subjects():
    pytest.importorskip("spacy")
    from ait2i.bench.chunks import subjects_of

    found, note = core.suggest_subjects(PROMPT)
    assert note == "" and found == list(subjects_of(PROMPT)) == ["green triangle", "purple circle"]
    assert core.suggest_subjects("a cat and a cat") == (["cat#1", "cat#2"], "")


def test_suggestions_without_spacy_say_so(monkeypatch):
    from ait2i.bench import chunks

    def absent():
        raise ValueError("spaCy is not installed; pip install 'ait2i[bench]' (spacy and en_core_web_sm)")

    monkeypatch.setattr(chunks, "load_nlp", absent)
    found, note = core.suggest_subjects("a prompt nobody tabulated, with a dog")
    assert found == [] and "No subject suggestions" in note and "spaCy is not installed" in note


def test_clicking_a_token_toggles_its_word():
    assert core.toggle_word("", "circle") == "circle"
    assert core.toggle_word("red circle\ncircle", "circle") == "red circle"
    assert core.toggle_word("red circle", "square") == "red circle\nsquare"


def test_drawn_boxes_become_the_api_boxes():
    canvas = np.zeros((200, 100, 3), np.uint8)  # (H, W): x is divided by 100, y by 200
    boxes = core.drawn_boxes(
        {"image": canvas, "boxes": [{"label": "red circle", "xmin": 10, "ymin": 20, "xmax": 50, "ymax": 100}]}
    )
    assert boxes["red circle"].as_tuple() == (0.1, 0.1, 0.5, 0.5)
    specs = core.subject_specs("red circle\n7", {"red circle": boxes["red circle"]})
    assert specs == ["red circle@0.1,0.1,0.5,0.5", [7]]
    assert core.without_boxes(specs) == ["red circle", [7]]
    tok = core.Pipelines("cpu").tokenizer("shapesworld")
    resolved = ait2i.resolve_subjects(tok, "a red circle and a blue square", specs)
    assert resolved[0].box.as_tuple() == (0.1, 0.1, 0.5, 0.5) and resolved[1].tokens == (7,)
    with pytest.raises(ValueError, match="not among the subjects"):
        core.subject_specs("blue square", boxes)
    with pytest.raises(ValueError, match="typed box and a drawn box"):
        core.subject_specs("red circle@0,0,1,1", boxes)
    two = [{"label": "a", "xmin": 0, "ymin": 0, "xmax": 5, "ymax": 5}] * 2
    with pytest.raises(ValueError, match="two boxes"):
        core.drawn_boxes({"image": canvas, "boxes": two})
    with pytest.raises(ValueError, match="no subject"):
        core.drawn_boxes({"image": canvas, "boxes": [{"label": "", "xmin": 0, "ymin": 0, "xmax": 5, "ymax": 5}]})


def test_config_panel_round_trips_and_refuses_like_the_cli():
    for method in ait2i.available_methods():
        rows = core.config_rows(method)
        assert core.config_from_rows(method, rows) == ait2i.get_method(method)
    rows = [["scale_factor", "30"], ["isolation_metric", "'cosine'"]]
    cfg = core.config_from_rows("ait2i", rows)
    assert cfg.scale_factor == 30 and cfg.isolation_metric == "cosine"
    with pytest.raises(ValueError) as e:
        core.config_from_rows("ait2i", [["scale_factor", "-1"]])
    with pytest.raises(ValueError) as ref:
        ait2i.AIT2IConfig(scale_factor=-1.0)
    assert str(e.value) == str(ref.value)  # the config's own refusal
    with pytest.raises(ValueError, match="has no field"):
        core.config_from_rows("ait2i", [["not_a_field", "1"]])


def test_a_preset_file_fills_the_panel(tmp_path):
    from ait2i.methods.presets import write_preset

    path = write_preset(tmp_path / "tuned.toml", ait2i.get_method("ait2i").replace(scale_factor=31.5))
    cfg = core.config_from_rows("ait2i", core.config_rows(str(path)))
    assert cfg == ait2i.get_method(str(path)) and cfg.scale_factor == 31.5


def test_requested_objects_of_a_shapes_prompt():
    assert core.requested_objects("A red circle, and a blue square.") == [("red", "circle"), ("blue", "square")]
    assert core.requested_objects("a photo of a cat") == []


def test_view_upscales_shapesworld_with_nearest_neighbour_and_draws_boxes():
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    big = np.asarray(core.view(im, True))
    assert big.shape == (core.VIEW_SIZE, core.VIEW_SIZE, 3)
    assert np.array_equal(big[::8, ::8], np.asarray(im))  # every source pixel is an 8x8 block
    assert np.asarray(core.view(im, False)).shape == (32, 32, 3)
    s = ait2i.Subject("red circle", (3,), box="0,0,0.5,0.5")
    boxed = np.asarray(core.view(im, True, [s]))
    assert tuple(boxed[0, 64]) == (255, 255, 255)  # the first subject's box edge, in white
    assert np.array_equal(boxed[200:, 200:], big[200:, 200:])  # outside the box: untouched


@pytest.fixture(scope="module")
def shapes_pipe():
    return core.Pipelines("cpu").get("shapesworld")


@pytest.mark.slow
def test_run_is_generate_twice_from_one_seed(shapes_pipe, tmp_path):
    cfg = ait2i.get_method("ait2i")
    req = core.Request("shapesworld", PROMPT, ["green triangle", "purple circle"], cfg, seed=3, steps=4,
                       guidance_scale=7.5)  # fmt: skip
    seen = []
    res = core.run(shapes_pipe, req, out_dir=tmp_path, on_step=lambda *a: seen.append(a))
    assert seen == [(n, s, 4) for n in ("guided", "vanilla") for s in range(1, 5)]
    for name, method in (("guided", cfg), ("vanilla", "none")):
        import torch

        ref = ait2i.generate(
            shapes_pipe, PROMPT, subjects=["green triangle", "purple circle"], method=method,
            generator=torch.Generator("cpu").manual_seed(3), num_inference_steps=4, guidance_scale=7.5,
        ).images[0]  # fmt: skip
        assert np.array_equal(np.asarray(res.images[name]), np.asarray(ref)), name
        assert sorted(res.diagnostics[name].maps) == [0, 1, 2, 3]
        params = read_png_params(res.files[name])
        assert params["prompt"] == PROMPT and params["seed"] == 3 and params["steps"] == 4
        assert params["method"] == ("ait2i" if name == "guided" else "none")
        assert Image.open(res.files[name]).size == (32, 32)
        v = res.verdicts[name]
        assert v["requested"] == ["green triangle", "purple circle"] and isinstance(v["clean_binding"], bool)
    assert core.attention_image(res.images["guided"], res.diagnostics["guided"], 2).size[0] > 100
    assert core.attention_image(res.images["guided"], res.diagnostics["guided"], 9) is None


@pytest.mark.slow
def test_run_refuses_with_the_api_messages(shapes_pipe):
    tok = core.Pipelines("cpu").tokenizer("shapesworld")
    with pytest.raises(ValueError) as ref:
        ait2i.resolve_subjects(tok, PROMPT, ["green star"])
    req = core.Request("shapesworld", PROMPT, ["green star"], ait2i.get_method("ait2i"), 0, 2, 7.5)
    with pytest.raises(ValueError) as e:
        core.run(shapes_pipe, req)
    assert str(e.value) == str(ref.value)
    layout = core.Request("shapesworld", PROMPT, ["green triangle"], ait2i.get_method("ait2i-layout"), 0, 2, 7.5)
    with pytest.raises(ValueError, match="box"):
        core.run(shapes_pipe, layout)
    with pytest.raises(ValueError, match="outside"):
        boxed = ["green triangle@0,0,1.5,1"]
        core.run(shapes_pipe, core.Request("shapesworld", PROMPT, boxed, "ait2i-layout", 0, 2, 7.5))


@pytest.mark.slow
def test_cancel_stops_at_the_next_step_and_leaves_the_pipeline_usable(shapes_pipe):
    flag = threading.Event()
    steps = []

    def on_step(name, step, total):
        steps.append(step)
        flag.set()  # the user presses Cancel during the first step

    req = core.Request("shapesworld", PROMPT, ["green triangle"], ait2i.get_method("ait2i"), 0, 6, 7.5)
    with pytest.raises(core.Cancelled, match="step 2 of 6"):
        core.run(shapes_pipe, req, on_step=on_step, cancel=flag)
    assert steps == [1]
    before = {k: type(v) for k, v in shapes_pipe.unet.attn_processors.items()}
    res = core.run(shapes_pipe, core.Request("shapesworld", PROMPT, ["green triangle"], "ait2i", 0, 2, 7.5))
    assert set(res.images) == {"guided", "vanilla"}
    assert {k: type(v) for k, v in shapes_pipe.unet.attn_processors.items()} == before


def test_cli_demo_refuses_without_gradio(monkeypatch, capsys):
    import ait2i.demo as demo

    why = 'ait2i demo needs gradio, which is not installed; pip install -e ".[demo]"'
    monkeypatch.setattr(demo, "missing", lambda: why)
    assert cli.main(["demo", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ait2i: error: ") and 'pip install -e ".[demo]"' in err


def test_demo_extra_is_pinned():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["demo"] and all(re.fullmatch(r"[\w.-]+==[\w.]+", r) for r in extras["demo"])


# -- the page in a real browser ----------------------------------------------------------------------------------------
REQUIRE = os.environ.get("AIT2I_REQUIRE_BROWSER") == "1"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync --disable-dev-shm-usage --window-size=1400,1500"
).split()


def _browser_missing() -> list[str]:
    missing = [p for p in (CHROMIUM, DRIVER) if not Path(p).is_file()]
    missing += [m for m in ("selenium", "gradio", "gradio_image_annotation") if importlib.util.find_spec(m) is None]
    return missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, fn, timeout: float = 120.0):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - the page is still rendering
            last = e
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def _fetch(url: str) -> bytes:
    if url.startswith("data:"):
        return base64.b64decode(url.split(",", 1)[1])
    with urllib.request.urlopen(url, timeout=30) as r:  # the page's own server on 127.0.0.1
        return r.read()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = _browser_missing()
    if missing:
        how = "apt-get install chromium chromium-driver; pip install -e '.[demo]' selenium"
        msg = f"the browser test needs {missing}: {how}"
        if REQUIRE:
            pytest.fail(f"AIT2I_REQUIRE_BROWSER=1 but {msg}")
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from ait2i.demo import serve

    port = _free_port()
    page = serve(None, "127.0.0.1", port, block=False)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        yield driver, port
    finally:
        driver.quit()
        page.close()


@pytest.mark.slow
def test_page_in_a_real_browser(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver, port = browser
    css = lambda sel: driver.find_element(By.CSS_SELECTOR, sel)
    text_of = lambda sel: " ".join(css(sel).text.split())

    def set_text(sel: str, text: str):
        box = _wait(sel, lambda: css(sel))
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        if text:
            box.send_keys(text)
        box.send_keys(Keys.TAB)

    # the prompt -> its tokens, and spaCy's subjects suggested
    subjects = "#subjects textarea"
    _wait("the first token table", lambda: "startoftext" in text_of("#tokens"))
    set_text("#subjects textarea", "")
    set_text("#prompt textarea", PROMPT)
    _wait("the tokens of the new prompt", lambda: "triangle" in text_of("#tokens"))
    _wait("spaCy's subjects", lambda: css(subjects).get_attribute("value") == "green triangle\npurple circle")

    # picking subjects by clicking tokens: "green triangle" off (typed away), then "circle" on and off, "triangle" on
    set_text(subjects, "purple circle")
    cell = lambda word: _wait(word, lambda: [c for c in driver.find_elements(By.CSS_SELECTOR, "#tokens [role=gridcell]")
                                             if c.text.strip() == word][0])  # fmt: skip
    cell("triangle").click()
    _wait("a clicked token", lambda: css(subjects).get_attribute("value") == "purple circle\ntriangle")
    set_text("#steps input", "4")
    set_text("#seed input", "5")

    # generate: both images, the checker's verdict, the PNGs with their parameters
    css("#generate").click()
    _wait("the run's end", lambda: "Done: 4 steps, seed 5" in text_of("#status"))
    shown = {}
    for name in ("vanilla", "guided"):
        src = _wait(f"the {name} image", lambda n=name: css(f"#{n} img").get_attribute("src"))
        shown[name] = np.asarray(Image.open(io.BytesIO(_fetch(src))).convert("RGB"))
        assert shown[name].shape == (core.VIEW_SIZE, core.VIEW_SIZE, 3)
    import torch

    pipe = core.Pipelines("cpu").get("shapesworld")  # the same weights, loaded apart from the page
    for name, method in (("guided", "ait2i"), ("vanilla", "none")):
        ref = ait2i.generate(
            pipe, PROMPT, subjects=["purple circle", "triangle"], method=method, num_inference_steps=4,
            guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(5),
        ).images[0]  # fmt: skip
        assert np.array_equal(shown[name][::8, ::8], np.asarray(ref)), f"the page's {name} image is not the API's"
        want = core.verdict_text(name, core.verdict(ref, PROMPT))
        assert " ".join(want.replace("**", "").split()) in text_of("#verdict")
    links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#files a")]
    pngs = [u for u in dict.fromkeys(links) if u and ".png" in u]
    assert len(pngs) == 2, links
    for url in pngs:
        params = json.loads(Image.open(io.BytesIO(_fetch(url))).text["ait2i"])
        assert params["prompt"] == PROMPT and params["seed"] == 5
        assert params["subjects"] == ["purple circle", "triangle"]
    assert _wait("the attention maps", lambda: css("#att-guided img").get_attribute("src"))
    assert _wait("the loss plot", lambda: css("#loss img").get_attribute("src"))
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(SCREENSHOT))

    # an error path: a subject that is not in the prompt, shown in the page with the API's own message
    tok = core.Pipelines("cpu").tokenizer("shapesworld")
    with pytest.raises(ValueError) as ref:
        ait2i.resolve_subjects(tok, PROMPT, ["green star"])
    set_text(subjects, "green star")
    css("#generate").click()
    _wait("the error message", lambda: text_of("#status").startswith("Error:"))
    assert text_of("#status") == " ".join(f"Error: {ref.value}".split())
    assert "ait2i-error" in css("#status").get_attribute("innerHTML")

    # nothing left this machine: every request the page made went to its own server
    urls = set()
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.add(msg["params"]["request"]["url"])
    outside = [u for u in urls if u.startswith(("http:", "https:", "ws:", "wss:")) and "//127.0.0.1:" not in u]
    assert not outside, outside
