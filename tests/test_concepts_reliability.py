"""Concept loading refuses what did not load (issue 17: items 9, 10 and the concept part of 18).

A LoRA whose keys sit under a prefix the pipeline does not read, a textual inversion with a NaN embedding, a
truncated safetensors file and a missing peft are refused by name, and the pipeline is left as it was;
``personalize measure`` runs Attend-and-Excite as the benchmark does at the same step count.
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from ait2i.shapes import personalize as P
from ait2i.shapes.model import load_pipeline


def _shipped_file(shape: str, kind: str) -> Path:
    path = P.concepts_dir() / f"{shape}-{kind}" / (P.TI_FILE if kind == "ti" else P.LORA_FILE)
    if not path.is_file():
        pytest.skip(f"no shipped {shape}-{kind} concept")
    return path


def _renamed_lora(tmp_path: Path, name: str, rename: dict[str, str]) -> Path:
    """The shipped star LoRA with the first key component renamed (``{"unet": "foo"}``) into ``tmp_path/name``."""
    sd = load_file(str(_shipped_file("star", "lora")))
    out = {}
    for k, v in sd.items():
        head, _, rest = k.partition(".")
        out[f"{rename.get(head, head)}.{rest}"] = v
    folder = tmp_path / name
    folder.mkdir()
    save_file(out, str(folder / P.LORA_FILE))
    return folder


def _lora_layers(pipe) -> int:
    """Modules of the UNet and text encoder holding a LoRA layer of any adapter."""
    return sum(len(getattr(m, "lora_A", None) or {}) > 0 for c in (pipe.unet, pipe.text_encoder) for m in c.modules())


def test_lora_under_another_prefix_is_refused_and_the_pipeline_left_as_it_was(tmp_path):
    folder = _renamed_lora(tmp_path, "star-lora", {"unet": "model", "text_encoder": "te"})
    pipe = load_pipeline()
    with pytest.raises(ValueError, match=r"pytorch_lora_weights\.safetensors.*no LoRA layer") as e:
        P.load_concept(pipe, folder, "lora")
    msg = str(e.value)
    assert "'model'" in msg and "'te'" in msg  # the prefixes found
    assert "'unet'" in msg and "'text_encoder'" in msg  # the prefixes expected
    assert pipe.get_list_adapters() == {} and _lora_layers(pipe) == 0
    # the same adapter name loads the real file afterwards: nothing was left behind
    assert P.load_concept(pipe, _shipped_file("star", "lora").parent, "lora", adapter_name="star-lora") == "star"
    assert pipe.get_list_adapters() == {"unet": ["star-lora"], "text_encoder": ["star-lora"]}


def test_lora_partly_under_another_prefix_is_refused(tmp_path):
    folder = _renamed_lora(tmp_path, "star-lora", {"text_encoder": "text_model"})  # the UNet part would load alone
    pipe = load_pipeline()
    with pytest.raises(ValueError, match=r"only 113 of the 125 LoRA layers.*'text_model'.*expected"):
        P.load_concept(pipe, folder, "lora")
    assert pipe.get_list_adapters() == {} and _lora_layers(pipe) == 0


def test_lora_adapter_name_already_loaded_is_refused_without_touching_it():
    pipe = load_pipeline()
    star = _shipped_file("star", "lora").parent
    P.load_concept(pipe, star, "lora", adapter_name="a")
    with pytest.raises(ValueError, match=r"(?i)adapter (name )?'?a'? (is )?already"):
        P.load_concept(pipe, _shipped_file("ring", "lora").parent, "lora", adapter_name="a")
    assert pipe.get_list_adapters() == {"unet": ["a"], "text_encoder": ["a"]} and _lora_layers(pipe) == 125


def test_lora_with_nan_weights_is_refused(tmp_path):
    sd = load_file(str(_shipped_file("star", "lora")))
    k = next(k for k in sd if ".lora_B." in k)
    sd[k] = torch.full_like(sd[k], float("nan"))
    (tmp_path / "bad").mkdir()
    save_file(sd, str(tmp_path / "bad" / P.LORA_FILE))
    pipe = load_pipeline()
    with pytest.raises(ValueError, match=rf"{P.LORA_FILE}.*not finite.*{k}"):
        P.load_concept(pipe, tmp_path / "bad", "lora")
    assert pipe.get_list_adapters() == {}


def test_ti_with_a_nan_embedding_is_refused_by_file_name(tmp_path):
    vec = torch.randn(2, 128)
    vec[1, 5] = float("nan")
    save_file({"<star>": vec}, str(tmp_path / P.TI_FILE))
    pipe = load_pipeline()
    with pytest.raises(ValueError, match=rf"{P.TI_FILE}.*not finite.*'<star>'"):
        P.load_concept(pipe, tmp_path, "ti")
    assert P.loaded_placeholders(pipe.tokenizer) == []


def test_ti_loads_exactly_the_file_vectors():
    path = _shipped_file("star", "ti")
    pipe = load_pipeline()
    assert P.load_concept(pipe, path.parent, "ti") == "<star>"
    ids = pipe.tokenizer.convert_tokens_to_ids(["<star>", "<star>_1"])
    got = pipe.text_encoder.get_input_embeddings().weight[ids].detach()
    torch.testing.assert_close(got, load_file(str(path))["<star>"], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["ti", "lora"])
def test_truncated_concept_file_is_refused_by_name(tmp_path, kind):
    src = _shipped_file("star", kind)
    folder = tmp_path / f"star-{kind}"
    folder.mkdir()
    (folder / src.name).write_bytes(src.read_bytes()[:-100])  # the header intact, the last tensor cut short
    pipe = load_pipeline()
    with pytest.raises(ValueError, match=rf"{src.name} is truncated or corrupt.*re-train .* or re-download"):
        P.load_concept(pipe, folder, kind)
    assert pipe.get_list_adapters() == {} and P.loaded_placeholders(pipe.tokenizer) == []


def test_peft_is_installed_with_the_package():
    """The README's install (``pip install -e .``) gives what its personalization example needs."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert any(d.replace(" ", "").startswith("peft>=") for d in pyproject["project"]["dependencies"])


def test_lora_without_peft_is_refused_up_front(monkeypatch):
    pipe = load_pipeline()
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now fails as on a machine without it
    with pytest.raises(ValueError, match=r"needs peft.*pip install"):
        P.load_concept(pipe, _shipped_file("star", "lora").parent, "lora")
    assert pipe.get_list_adapters() == {}


def _fake_generate(calls):
    from PIL import Image

    def generate(pipe, prompt, subjects, method, num_inference_steps, **kw):
        calls.append((method, num_inference_steps))
        return SimpleNamespace(images=[Image.new("RGB", (32, 32))] * kw["num_images_per_prompt"])

    return generate


def test_measure_runs_attend_and_excite_as_the_benchmark_does(tmp_path, monkeypatch):
    import ait2i
    from ait2i.bench.specs import parse_methods
    from ait2i.config import get_config

    _shipped_file("star", "lora")
    calls: list = []
    monkeypatch.setattr(ait2i, "generate", _fake_generate(calls))
    argv = ["measure", "--out", str(tmp_path), "--sets", "star", "--kinds", "lora", "--methods", "attend-and-excite",
            "--seeds", "0"]  # fmt: skip
    P.main([*argv, "--steps", "20"])
    bench = {c.name: c for _, c in parse_methods("default")}["attend-and-excite"]
    assert calls and all(n == 20 for _, n in calls)
    for method, _ in calls:
        cfg = get_config(method)
        assert cfg == bench
        assert cfg.guided_steps(20) == 10 and sorted(cfg.refinement_thresholds(20)) == [0, 4, 8]
    rows = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert rows and all(r["method_config"]["refinement"] == {"0": 0.05, "0.2": 0.5, "0.4": 0.8} for r in rows)
    n = len(calls)
    P.main([*argv, "--steps", "20"])  # a rerun resumes: nothing left to do
    assert len(calls) == n
    with pytest.raises(ValueError, match=r"another config \(\{'steps': 20\}\) than this run's \(\{'steps': 10\}\)"):
        P.main([*argv, "--steps", "10"])  # rows at 10 steps would be summarised with those at 20
    assert len(calls) == n


def test_measure_refuses_to_resume_rows_made_with_another_method_config(tmp_path, monkeypatch):
    import ait2i

    _shipped_file("star", "lora")
    # a row of a run from before measure recorded its method configs (Attend-and-Excite's 50-step windows then)
    old = {"concept_set": "star", "kind": "lora", "method": "attend-and-excite", "prompt": "a red star", "seed": 0,
           "prompt_index": 0, "image": "images/star_lora_attend-and-excite_0_0.png", "adapter_weight": 1.0}  # fmt: skip
    (tmp_path / "rows.jsonl").write_text(json.dumps(old) + "\n")
    calls: list = []
    monkeypatch.setattr(ait2i, "generate", _fake_generate(calls))
    argv = ["measure", "--out", str(tmp_path), "--sets", "star", "--kinds", "lora", "--methods", "attend-and-excite",
            "--seeds", "0"]  # fmt: skip
    with pytest.raises(ValueError, match=r"attend-and-excite rows made with another config.*another --out"):
        P.main(argv)
    assert calls == []
