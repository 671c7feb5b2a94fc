"""The host layer's structure: every parent check runs, typed extension points, hosts say where they read, and the
capture package and engine import no host (issue 18)."""

import ast
from pathlib import Path

import pytest
import torch

import ait2i
from ait2i import AIT2IConfig
from ait2i.capture.unet import select_layers
from ait2i.hosts import LOOP_START, START_LATENTS, ReadyAfter, host_for
from ait2i.testing import tiny_sd_pipeline

SRC = Path(ait2i.__file__).parent
PROMPT, SUBJECTS = "a red car and a blue bench", ["red car", "blue bench"]


def _imports(path: Path) -> set[str]:
    """Modules imported by ``path``, relative ones resolved against the package."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            out |= {module} | {f"{module}.{a.name}" for a in node.names}
    return out


def test_capture_and_engine_import_no_host_and_transformer_hosts_no_sd3():
    for path in [*sorted((SRC / "capture").glob("*.py")), SRC / "engine.py"]:
        assert not any(m.startswith("ait2i.hosts") for m in _imports(path)), path.name
    for name in ("pixart.py", "flux.py"):
        assert not any(m.startswith("ait2i.hosts.sd3") for m in _imports(SRC / "hosts" / name)), name


def test_no_check_bypasses_a_parent():
    for path in sorted((SRC / "hosts").glob("*.py")):
        assert "Host.check(self)" not in path.read_text(), path.name


@pytest.mark.slow
def test_step_hook_unet_hosts_run_the_unet_checks():
    """GLIGEN's host (scheduler-step injector) refuses an LCM-distilled UNet like the callback hosts do; before, its
    check skipped the UNet checks of its parent."""
    pipe = tiny_sd_pipeline(kind="gligen")
    pipe.unet.register_to_config(time_cond_proj_dim=8)
    with pytest.raises(TypeError, match="LCM"):
        ait2i.generate(pipe, PROMPT, SUBJECTS)


@pytest.mark.slow
def test_ready_after_is_typed():
    sd, inpaint = tiny_sd_pipeline(kind="inpaint"), tiny_sd_pipeline(kind="inpaint9")
    assert host_for(sd)(sd, PROMPT, {}).ready_after() == START_LATENTS  # a 4-channel inpainting UNet
    ready = host_for(inpaint)(inpaint, PROMPT, {}).ready_after()
    assert isinstance(ready, ReadyAfter) and ready.method == "prepare_mask_latents"
    assert LOOP_START.method == "progress_bar"


@pytest.mark.slow
def test_a_unet_host_says_where_it_reads():
    pipe = tiny_sd_pipeline()
    host = host_for(pipe)(pipe, PROMPT, {})
    z = torch.zeros(1, 4, 32, 32)
    cfg = AIT2IConfig()
    reads = host.reads(cfg, z)
    assert reads.res == reads.grid == (16, 16)
    assert list(reads.layers) == select_layers(pipe.unet, (32, 32), (16, 16), cfg.from_where)
    down = host.reads(cfg.replace(from_where=("down",)), z)
    assert down.layers and all(n.startswith("down_blocks") for n in down.layers)
    with pytest.raises(ValueError, match="never produced"):
        host.reads(cfg.replace(attn_res=5), z)


@pytest.mark.slow
def test_a_read_option_the_host_ignores_is_refused_not_dropped():
    """``from_where`` names UNet parts: a transformer host refuses a changed value instead of ignoring it."""
    import torch

    import ait2i
    from ait2i.testing import tiny_sd3_pipeline, tiny_sd_pipeline

    kw = dict(num_inference_steps=2, output_type="latent")
    sd3 = tiny_sd3_pipeline()
    cfg = ait2i.get_method("ait2i").replace(attn_res=None)
    with pytest.raises(ValueError, match=r"from_where=\('down',\) does not apply to StableDiffusion3Pipeline"):
        ait2i.generate(sd3, "a cat and a dog", ["cat", "dog"], cfg.replace(from_where=("down",)),
                       generator=torch.Generator().manual_seed(0), **kw)  # fmt: skip
    ait2i.generate(sd3, "a cat and a dog", ["cat", "dog"], cfg, generator=torch.Generator().manual_seed(0), **kw)
    sd = tiny_sd_pipeline()  # a UNet host reads from_where
    ait2i.generate(sd, "a cat and a dog", ["cat", "dog"], ait2i.get_method("ait2i").replace(from_where=("down",),
                   attn_res=16), generator=torch.Generator().manual_seed(0), **kw)  # fmt: skip
