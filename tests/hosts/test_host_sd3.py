"""The SD3 host (``StableDiffusion3Pipeline``) on a tiny random pipeline built from configs, and on the ShapesWorld
MM-DiT when its exported folder is shipped.

Random tiny models have near-uniform attention, so the tiny tests check correctness (guidance off = the stock
pipeline bit for bit, guided runs record finite losses and move the latents, state restored, refusals); the effect
of guidance (the loss goes down) is checked on the trained ShapesWorld MM-DiT.
"""

import math
from pathlib import Path

import pytest
import torch
from transformer_host_checks import (
    method_moves_the_latents,
    none_with_maps_equals_stock,
    two_images_with_refinement_rows,
)

import ait2i
from ait2i import AIT2IConfig
from ait2i.capture.joint import joint_text_probabilities
from ait2i.hosts.sd3 import StableDiffusion3Host
from ait2i.testing import tiny_sd3_pipeline, unmoved

pytestmark = pytest.mark.slow

PROMPT, SUBJECTS = "a red car and a blue bench", ["red car", "blue bench"]
KW = dict(num_inference_steps=4, output_type="latent", height=64, width=64)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd3_pipeline()


def _no_leftovers(pipe, before):
    assert dict(pipe.transformer.attn_processors) == before
    assert not {"encode_prompt", "prepare_latents", "progress_bar"} & set(vars(pipe))


def test_host_is_picked_for_sd3(pipe):
    assert ait2i.hosts.host_for(pipe) is StableDiffusion3Host
    assert "StableDiffusion3Pipeline" in ait2i.hosts.supported_pipelines()


def test_none_with_maps_equals_stock(pipe):
    none_with_maps_equals_stock(pipe, KW, _no_leftovers)


@pytest.mark.parametrize("method", ["ait2i", "ait2i-paper", "attend-and-excite"])
def test_methods_run_record_finite_losses_and_move_the_latents(pipe, method):
    method_moves_the_latents(pipe, method, KW, _no_leftovers)


def test_two_images_per_prompt_with_refinement_rows(pipe):
    two_images_with_refinement_rows(pipe, KW)


def test_guided_timesteps_are_the_loops(pipe):
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, AIT2IConfig(max_guided_steps=1.0), generator=_gen(), **KW)
    pipe.scheduler.set_timesteps(4)
    assert [r.timestep for r in out.diagnostics.steps] == [int(t) for t in pipe.scheduler.timesteps]


def test_capture_is_the_joint_attention_at_the_clip_keys_and_stops_after_the_read_block(pipe):
    tr = pipe.transformer
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, a, k, i=i: seen.append(i), with_kwargs=True)
             for i, b in enumerate(tr.transformer_blocks)]  # fmt: skip
    try:
        out = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0,), num_inference_steps=1,
                             output_type="latent", height=64, width=64, guidance_scale=1.0)  # fmt: skip
    finally:
        for h in hooks:
            h.remove()
    assert seen == [0, 0, 1]  # the guided pass reads block 0 (2 // 4) and stops; then the loop
    maps = out.diagnostics.maps[0]
    assert torch.isfinite(maps).all() and (maps > 0).all()
    # "clip" is a softmax over the 77 CLIP keys; "text" and "joint" put less mass on them
    attn = tr.transformer_blocks[0].attn
    x, ctx = torch.randn(1, 256, 16), torch.randn(1, 77 + 256, 16)
    clip = joint_text_probabilities(attn, x, ctx, 77, "clip")
    assert clip.shape == (2, 256, 77)
    torch.testing.assert_close(clip.sum(-1), torch.ones(2, 256))
    text, joint = (joint_text_probabilities(attn, x, ctx, 77, n) for n in ("text", "joint"))
    assert (joint.sum(-1) < text.sum(-1)).all() and (text.sum(-1) < 1).all()
    # "joint" is the processor's own attention (scaled_dot_product_attention on [image ; text] with one-hot values)
    with torch.no_grad():
        heads = attn.heads

        def split(v, norm):
            v = v.view(1, -1, heads, v.shape[-1] // heads).transpose(1, 2)
            return norm(v) if norm is not None else v

        q = torch.cat([split(attn.to_q(x), attn.norm_q), split(attn.add_q_proj(ctx), attn.norm_added_q)], 2)
        k = torch.cat([split(attn.to_k(x), attn.norm_k), split(attn.add_k_proj(ctx), attn.norm_added_k)], 2)
        eye = torch.eye(k.shape[2]).expand(1, heads, -1, -1)
        probs = torch.nn.functional.scaled_dot_product_attention(q, k, eye)  # (1, heads, N, N) rows = softmax
        torch.testing.assert_close(joint, probs[0, :, :256, 256 : 256 + 77], rtol=1e-4, atol=1e-6)
        text_ref = probs[0, :, :256, 256:] / probs[0, :, :256, 256:].sum(-1, keepdim=True)
        torch.testing.assert_close(text, text_ref[..., :77], rtol=1e-4, atol=1e-6)


def test_user_callback_and_joint_attention_kwargs(pipe):
    from diffusers.callbacks import PipelineCallback

    class Seen(PipelineCallback):
        tensor_inputs = ["latents", "pooled_prompt_embeds"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            self.keys = sorted(callback_kwargs)
            return {}

    seen = Seen()
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, AIT2IConfig(max_guided_steps=1.0), callback_on_step_end=seen,
                         joint_attention_kwargs={"scale": 1.0}, generator=_gen(), **KW)  # fmt: skip
    assert seen.keys == ["latents", "pooled_prompt_embeds"] and len(out.diagnostics.steps) == 4


def test_attn_res_pools_the_token_grid(pipe):
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, AIT2IConfig(attn_res=8), record_maps=(0,), generator=_gen(), **KW)
    assert out.diagnostics.maps[0].shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match="token grid is 16x16"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, AIT2IConfig(attn_res=5), generator=_gen(), **KW)


def test_refusals(pipe):
    with pytest.raises(ValueError, match="`prompt_2` differs from the prompt"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, prompt_2="a green car and a blue bench", **KW)
    with pytest.raises(ValueError, match="prompt_embeds"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, prompt_embeds=torch.zeros(1, 333, 32), **KW)
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, pooled_prompt_embeds=torch.zeros(1, 32), **KW)
    # the same words are fine; prompt_3 without T5 is ignored by the pipeline
    ok = ait2i.generate(pipe, PROMPT, SUBJECTS, prompt_2=PROMPT, prompt_3="anything", generator=_gen(), **KW)
    assert ok.diagnostics.steps
    from diffusers import EulerDiscreteScheduler

    saved = pipe.scheduler
    try:
        pipe.scheduler = EulerDiscreteScheduler()
        with pytest.raises(TypeError, match="EulerDiscreteScheduler is not supported with StableDiffusion3Pipeline"):
            ait2i.generate(pipe, PROMPT, SUBJECTS, **KW)
    finally:
        pipe.scheduler = saved


def test_with_t5_encoder():
    pipe = tiny_sd3_pipeline(with_t5=True)
    stock = pipe(PROMPT, generator=_gen(), **KW).images
    rec = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0,), generator=_gen(), **KW)
    assert torch.equal(rec.images, stock)
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, AIT2IConfig(max_guided_steps=1.0), generator=_gen(), **KW)
    assert all(math.isfinite(v) for r in out.diagnostics.steps for v in r.loss)
    with pytest.raises(ValueError, match="`prompt_3` differs"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, prompt_3="a photo", **KW)


# -- the trained ShapesWorld MM-DiT ---------------------------------------------------------------------------------
SHAPES_MMDIT = Path(ait2i.__file__).parent / "shapes" / "pretrained_mmdit"


def test_the_shapesworld_mmdit_ships_under_30_mb_and_loads_by_name(tmp_path, capsys):
    from ait2i.cli import main
    from ait2i.models import load_model

    assert (SHAPES_MMDIT / "model_index.json").is_file() and (SHAPES_MMDIT / "TRAINING.json").is_file()
    size = sum(f.stat().st_size for f in SHAPES_MMDIT.rglob("*") if f.is_file())
    assert size <= 30e6, size
    pipe = load_model("shapesworld-mmdit")
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and pipe.text_encoder_3 is None
    assert main(["tokens", "a red circle", "--model", "shapesworld-mmdit"]) == 0
    assert capsys.readouterr().out.splitlines()[3].split() == ["2", "red", "red"]
    out = tmp_path / "img.png"
    argv = ["generate", "a red circle and a blue square", "--subjects", "red circle", "blue square", "--model",
            "shapesworld-mmdit", "--steps", "2", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert out.is_file()


def test_guidance_lowers_the_loss_on_the_shapesworld_mmdit():
    from ait2i.shapes.model import load_sd3_pipeline

    pipe = load_sd3_pipeline(SHAPES_MMDIT)
    prompt, subjects = "a red circle and a blue square", ["red circle", "blue square"]
    kw = dict(num_inference_steps=10, output_type="latent", guidance_scale=4.0)
    losses = {}
    for eta in (0.0, 20.0):
        totals = []
        for seed in range(3):
            cfg = AIT2IConfig(scale_factor=eta) if eta else unmoved(AIT2IConfig())
            out = ait2i.generate(pipe, prompt, subjects, cfg, generator=_gen(seed), **kw)
            totals.append(sum(r.loss[0] for r in out.diagnostics.steps[1:]))
        losses[eta] = sum(totals)
    assert losses[20.0] < losses[0.0]


def test_the_two_clip_tokenizers_must_split_the_prompt_alike():
    from ait2i.testing import clip_bang_tokenizer

    pipe = tiny_sd3_pipeline()
    pipe.tokenizer_2 = clip_bang_tokenizer()  # SD3's second tokenizer pads with "!" and splits "!!" in two
    with pytest.raises(ValueError, match=r"two tokenizers split the prompt differently from token 3"):
        ait2i.generate(pipe, "a cat!! and a dog", ["cat", "dog"], **KW)
    out = ait2i.generate(pipe, "a cat and a dog", ["cat", "dog"], **KW)  # a prompt both split alike runs
    assert out.diagnostics.steps


def test_saved_folder_without_t5_loads_and_the_bench_names_the_scheduler_fix(pipe, tmp_path):
    """A folder saved with ``text_encoder_3=None`` (``[null, null]`` in model_index.json) loads by path, and a
    protocol whose scheduler SD3 cannot run is refused at load time with the fix (``--scheduler default``)."""
    from ait2i.bench.runner import load_pipeline, resolve_protocol
    from ait2i.models import load_model

    folder = tmp_path / "sd3"
    pipe.save_pretrained(folder)
    loaded = load_model(str(folder))
    assert type(loaded).__name__ == "StableDiffusion3Pipeline" and loaded.text_encoder_3 is None
    with pytest.raises(ValueError, match="samples with DDIMScheduler.*pass --scheduler default"):
        load_pipeline(str(folder), resolve_protocol("shapes", "cpu"), device="cpu")
    ok = load_pipeline(str(folder), dict(resolve_protocol("shapes", "cpu"), scheduler="default"), device="cpu")
    assert type(ok.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
