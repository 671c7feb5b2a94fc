"""Concept loading refuses what did not load (issue 17: items 9, 10 and the concept part of 18).

A LoRA whose keys sit under a prefix the pipeline does not read, a textual inversion with a NaN embedding, a
truncated safetensors file and a missing peft are refused by name, and the pipeline is left as it was (the
``personalization`` suite running Attend-and-Excite as the benchmark does: tests/shapes/test_personalize.py).
"""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ait2i.shapes import concept as C
from ait2i.shapes.model import load_pipeline
from ait2i.subjects import loaded_placeholders


def _shipped_file(shape: str, kind: str) -> Path:
    path = C.concepts_dir() / f"{shape}-{kind}" / (C.TI_FILE if kind == "ti" else C.LORA_FILE)
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
    save_file(out, str(folder / C.LORA_FILE))
    return folder


def _lora_layers(pipe) -> int:
    """Modules of the UNet and text encoder holding a LoRA layer of any adapter."""
    return sum(len(getattr(m, "lora_A", None) or {}) > 0 for c in (pipe.unet, pipe.text_encoder) for m in c.modules())


def test_lora_under_another_prefix_is_refused_and_the_pipeline_left_as_it_was(tmp_path):
    folder = _renamed_lora(tmp_path, "star-lora", {"unet": "model", "text_encoder": "te"})
    pipe = load_pipeline()
    with pytest.raises(ValueError, match=r"pytorch_lora_weights\.safetensors.*no LoRA layer") as e:
        C.load_concept(pipe, folder, "lora")
    msg = str(e.value)
    assert "'model'" in msg and "'te'" in msg  # the prefixes found
    assert "'unet'" in msg and "'text_encoder'" in msg  # the prefixes expected
    assert pipe.get_list_adapters() == {} and _lora_layers(pipe) == 0
    # the same adapter name loads the real file afterwards: nothing was left behind
    assert C.load_concept(pipe, _shipped_file("star", "lora").parent, "lora", adapter_name="star-lora") == "star"
    assert pipe.get_list_adapters() == {"unet": ["star-lora"], "text_encoder": ["star-lora"]}


def test_lora_partly_under_another_prefix_is_refused(tmp_path):
    folder = _renamed_lora(tmp_path, "star-lora", {"text_encoder": "text_model"})  # the UNet part would load alone
    pipe = load_pipeline()
    with pytest.raises(ValueError, match=r"only 113 of the 125 LoRA layers.*'text_model'.*expected"):
        C.load_concept(pipe, folder, "lora")
    assert pipe.get_list_adapters() == {} and _lora_layers(pipe) == 0


def test_lora_adapter_name_already_loaded_is_refused_without_touching_it():
    pipe = load_pipeline()
    star = _shipped_file("star", "lora").parent
    C.load_concept(pipe, star, "lora", adapter_name="a")
    with pytest.raises(ValueError, match=r"(?i)adapter (name )?'?a'? (is )?already"):
        C.load_concept(pipe, _shipped_file("ring", "lora").parent, "lora", adapter_name="a")
    assert pipe.get_list_adapters() == {"unet": ["a"], "text_encoder": ["a"]} and _lora_layers(pipe) == 125


def test_lora_with_nan_weights_is_refused(tmp_path):
    sd = load_file(str(_shipped_file("star", "lora")))
    k = next(k for k in sd if ".lora_B." in k)
    sd[k] = torch.full_like(sd[k], float("nan"))
    (tmp_path / "bad").mkdir()
    save_file(sd, str(tmp_path / "bad" / C.LORA_FILE))
    pipe = load_pipeline()
    with pytest.raises(ValueError, match=rf"{C.LORA_FILE}.*not finite.*{k}"):
        C.load_concept(pipe, tmp_path / "bad", "lora")
    assert pipe.get_list_adapters() == {}


def test_ti_with_a_nan_embedding_is_refused_by_file_name(tmp_path):
    vec = torch.randn(2, 128)
    vec[1, 5] = float("nan")
    save_file({"<star>": vec}, str(tmp_path / C.TI_FILE))
    pipe = load_pipeline()
    with pytest.raises(ValueError, match=rf"{C.TI_FILE}.*not finite.*'<star>'"):
        C.load_concept(pipe, tmp_path, "ti")
    assert loaded_placeholders(pipe.tokenizer) == []


def test_ti_loads_exactly_the_file_vectors():
    path = _shipped_file("star", "ti")
    pipe = load_pipeline()
    assert C.load_concept(pipe, path.parent, "ti") == "<star>"
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
        C.load_concept(pipe, folder, kind)
    assert pipe.get_list_adapters() == {} and loaded_placeholders(pipe.tokenizer) == []


def test_peft_is_installed_with_the_package():
    """The README's install (``pip install -e .``) gives what its personalization example needs."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert any(d.replace(" ", "").startswith("peft>=") for d in pyproject["project"]["dependencies"])


def test_lora_without_peft_is_refused_up_front(monkeypatch):
    pipe = load_pipeline()
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now fails as on a machine without it
    with pytest.raises(ValueError, match=r"needs peft.*pip install"):
        C.load_concept(pipe, _shipped_file("star", "lora").parent, "lora")
    assert pipe.get_list_adapters() == {}
