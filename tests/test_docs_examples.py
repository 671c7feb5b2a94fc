"""The toy method and toy host of docs/method.md ("Hosts and methods") run as written and plug in without edits."""

import re
from pathlib import Path

import pytest
import torch

import ait2i
from ait2i.testing import make_scheduler, tiny_sd_components

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[1] / "docs" / "method.md"


def _example(name: str) -> dict:
    text = DOC.read_text()
    m = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert m, f"docs/method.md has no '{name}' example"
    namespace: dict = {}
    exec(compile(m.group(1), f"docs/method.md:{name}", "exec"), namespace)  # noqa: S102 - our own docs
    return namespace


@pytest.fixture
def registries():
    from ait2i import hosts
    from ait2i.methods import registry

    saved_methods, saved_hosts = dict(registry._REGISTRY), list(hosts._HOSTS)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved_methods)
    hosts._HOSTS[:] = saved_hosts


def test_toy_method_and_toy_host_run(registries):
    _example("method")
    ns = _example("host")
    assert "left-bias" in ait2i.available_methods() and "ToyPipeline" in ait2i.supported_pipelines()
    c = tiny_sd_components()
    pipe = ns["ToyPipeline"](c["tokenizer"], c["text_encoder"], c["unet"], make_scheduler("ddim"))
    before = dict(pipe.unet.attn_processors)
    stock = pipe("a cat and a dog", generator=torch.Generator().manual_seed(0)).images
    none = ait2i.generate(pipe, "a cat and a dog", ["cat", "dog"], "none", record_maps=(0,),
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(none.images, stock) and 0 in none.diagnostics.maps
    out = ait2i.generate(pipe, "a cat and a dog", ["cat", "dog"], "left-bias",
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    steps = out.diagnostics.steps
    assert [r.guided for r in steps] == [True, True] and set(steps[0].terms) == {"right"}
    assert not torch.equal(out.images, stock)
    assert dict(pipe.unet.attn_processors) == before
