"""The Flux host (``FluxPipeline``) on a tiny random pipeline built from configs, with the tiny SentencePiece T5
tokenizer of ``tests/data/t5-tokenizer``.

Random tiny models have near-uniform attention, so these tests check correctness: guidance off = the stock pipeline
bit for bit, guided runs record finite losses and move the latents, the capture is the processor's own attention
(rotary positions included) at the T5 keys and stops after the read block, the guided pass sees what the denoiser
sees, state restored, refusals, the CLI on a saved Flux folder.
"""

import pytest
import torch
from transformer_host_checks import (
    PROMPT,
    SUBJECTS,
    gen,
    method_moves_the_latents,
    none_with_maps_equals_stock,
    two_images_with_refinement_rows,
)

import ait2i
from ait2i import AIT2IConfig
from ait2i.capture.joint import flux_text_probabilities
from ait2i.hosts import host_for
from ait2i.hosts.flux import FluxHost
from ait2i.subjects import end_token_index, prompt_tokens
from ait2i.testing import tiny_flux_pipeline

pytestmark = pytest.mark.slow

KW = dict(num_inference_steps=4, output_type="latent", height=32, width=32, max_sequence_length=32)


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


def _no_leftovers(pipe, before):
    assert dict(pipe.transformer.attn_processors) == before
    assert not {"encode_prompt", "prepare_latents", "progress_bar"} & set(vars(pipe))


def test_host_is_picked_and_subjects_resolve_on_t5(pipe):
    assert host_for(pipe) is FluxHost
    host = FluxHost(pipe, PROMPT, dict(KW))
    assert host.tokenizer is pipe.tokenizer_2 and FluxHost.subject_tokenizer(pipe) is pipe.tokenizer_2
    assert host.eot_index == end_token_index(pipe.tokenizer_2, PROMPT)
    toks = dict(prompt_tokens(pipe.tokenizer_2, PROMPT))
    assert toks[0] == "\u2581a" and toks[host.eot_index] == "</s>"  # no start token: the prompt starts at 0
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, AIT2IConfig(max_guided_steps=0.25), generator=gen(), **KW)
    car, bench = out.diagnostics.subjects
    assert toks[car.tokens[0]] == "\u2581car" and toks[bench.tokens[0]] == "\u2581bench"


def test_none_with_maps_equals_stock(pipe):
    none_with_maps_equals_stock(pipe, KW, _no_leftovers)


@pytest.mark.parametrize("method", ["ait2i", "ait2i-paper", "attend-and-excite"])
def test_methods_run_record_finite_losses_and_move_the_latents(pipe, method):
    method_moves_the_latents(pipe, method, KW, _no_leftovers)


def test_schnell_style_transformer_without_guidance_embedding():
    pipe = tiny_flux_pipeline(guidance_embeds=False)
    none_with_maps_equals_stock(pipe, KW, _no_leftovers)
    method_moves_the_latents(pipe, "ait2i", KW, _no_leftovers)


def test_true_cfg_with_a_negative_prompt(pipe):
    kw = dict(KW, negative_prompt="a green tree", true_cfg_scale=2.0)
    stock = pipe(PROMPT, generator=gen(), **kw).images
    rec = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0,), generator=gen(), **kw)
    assert torch.equal(rec.images, stock)
    # the guided pass conditions on the prompt's encoding, not the negative prompt's (the pipeline's second call)
    seen = []
    hook = pipe.transformer.context_embedder.register_forward_hook(lambda m, a, o: seen.append(a[0].clone()))
    try:
        one = dict(kw, num_inference_steps=1)
        ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0,), generator=gen(), **one)
    finally:
        hook.remove()
    with torch.no_grad():
        positive = pipe.encode_prompt(PROMPT, PROMPT, max_sequence_length=32)[0]
        negative = pipe.encode_prompt("a green tree", "a green tree", max_sequence_length=32)[0]
    torch.testing.assert_close(seen[0], positive)  # the recording pass comes first
    assert not torch.allclose(seen[0], negative)


def test_two_images_per_prompt_with_refinement_rows(pipe):
    two_images_with_refinement_rows(pipe, KW)


def test_guided_pass_gets_the_denoisers_inputs(pipe):
    """The guided pass's transformer call has the loop's arguments (timestep / 1000, guidance, ids, pooled)."""
    calls = []

    def spy(module, args, kwargs):
        calls.append({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})

    hook = pipe.transformer.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        ait2i.generate(pipe, PROMPT, SUBJECTS, AIT2IConfig(max_guided_steps=0.25), generator=gen(),
                       guidance_scale=4.0, joint_attention_kwargs={"scale": 1.0}, **KW)  # fmt: skip
    finally:
        hook.remove()
    guided, loop = calls[0], calls[1]  # step 0: the guided pass, then the loop's call on the updated latents
    for key in ("timestep", "guidance", "pooled_projections", "encoder_hidden_states", "txt_ids", "img_ids"):
        torch.testing.assert_close(guided[key], loop[key], rtol=0, atol=0, msg=key)
    assert float(guided["guidance"][0]) == 4.0 and guided["joint_attention_kwargs"] == {"scale": 1.0}
    assert not torch.equal(guided["hidden_states"], loop["hidden_states"])  # the loop sees the updated latents


def test_capture_is_the_processors_attention_at_the_t5_keys_with_rotary_positions(pipe):
    tr = pipe.transformer
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, a, k, i=i: seen.append(i), with_kwargs=True)
             for i, b in enumerate(tr.transformer_blocks)]  # fmt: skip
    try:
        out = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0,), **dict(KW, num_inference_steps=1))
    finally:
        for h in hooks:
            h.remove()
    assert seen == [0, 1, 0, 1, 2, 3]  # the guided pass reads block 1 (4 // 4) and stops; then the loop's 4 blocks
    assert torch.isfinite(out.diagnostics.maps[0]).all()

    # the probabilities are what the processor's own scaled_dot_product_attention computes (rotary included)
    attn = tr.transformer_blocks[1].attn
    n_txt, n_img = 32, 256
    x, ctx = torch.randn(1, n_img, 32), torch.randn(1, n_txt, 32)
    ids = torch.cat([torch.zeros(n_txt, 3), pipe._prepare_latent_image_ids(1, 16, 16, "cpu", torch.float32)])
    rotary = tr.pos_embed(ids)
    with torch.no_grad():
        ref = _processor_probs(attn, x, ctx, rotary)
        joint = flux_text_probabilities(attn, x, ctx, rotary, "joint")
        torch.testing.assert_close(joint, ref, rtol=1e-4, atol=1e-6)
        text = flux_text_probabilities(attn, x, ctx, rotary, "text")
        torch.testing.assert_close(text, ref / ref.sum(-1, keepdim=True), rtol=1e-4, atol=1e-6)
        # the rotation matters: without it the image queries see other probabilities
        assert not torch.allclose(flux_text_probabilities(attn, x, ctx, None, "joint"), joint, atol=1e-4)


def _processor_probs(attn, x, ctx, rotary) -> torch.Tensor:
    """Image-query x text-key probabilities of the processor's own attention call: the query and key it hands
    ``scaled_dot_product_attention``, recorded, then softmax(q k^T / sqrt(d)); ``(heads, N_img, N_txt)``."""
    recorded = {}
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def sdpa(*a, **kw):
        recorded["q"], recorded["k"] = kw.get("query", a[0] if a else None), kw.get("key", a[1] if a else None)
        return real_sdpa(*a, **kw)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        attn.processor(attn, x, ctx, None, rotary)
    finally:
        torch.nn.functional.scaled_dot_product_attention = real_sdpa
    q, k = recorded["q"].float(), recorded["k"].float()  # (1, heads, N_txt + N_img, d)
    if q.shape[1] != attn.heads:  # a backend that keeps (B, N, heads, d)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    n_txt = ctx.shape[1]
    return (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)[0, :, n_txt:, :n_txt]


def test_maps_of_a_real_run_are_the_processors_attention_with_its_rotary_positions(pipe, monkeypatch):
    """What the store receives in a real guided pass equals the processor's attention on that call's own inputs
    (hidden states, text tokens and the rotary embedding the transformer passes)."""
    from ait2i.capture.store import GridAttentionStore

    got, inputs = [], []
    real_add = GridAttentionStore.add

    def add(self, name, probs, heads):
        got.append(probs.detach().clone())
        return real_add(self, name, probs, heads)

    monkeypatch.setattr(GridAttentionStore, "add", add)
    attn = pipe.transformer.transformer_blocks[1].attn
    hook = attn.register_forward_pre_hook(lambda m, a, k: inputs.append({n: v for n, v in k.items()}), with_kwargs=True)
    try:
        ait2i.generate(
            pipe, PROMPT, SUBJECTS, "none", record_maps=(0,), generator=gen(), **dict(KW, num_inference_steps=1)
        )
    finally:
        hook.remove()
    first = inputs[0]  # the guided pass comes before the loop's call
    with torch.no_grad():
        ref = _processor_probs(attn, first["hidden_states"].detach(), first["encoder_hidden_states"].detach(),
                               tuple(r.detach() for r in first["image_rotary_emb"]))  # fmt: skip
    torch.testing.assert_close(got[0], ref, rtol=1e-4, atol=1e-6)


def test_attn_res_pools_the_token_grid(pipe):
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, AIT2IConfig(attn_res=8), record_maps=(0,), generator=gen(), **KW)
    assert out.diagnostics.maps[0].shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match="token grid is 16x16"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, AIT2IConfig(attn_res=5), generator=gen(), **KW)


def test_refusals(pipe):
    with pytest.raises(ValueError, match="`prompt_2` differs from the prompt"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, prompt_2="a green car and a blue bench", **KW)
    for key, value in [("prompt_embeds", torch.zeros(1, 32, 32)), ("pooled_prompt_embeds", torch.zeros(1, 16)),
                       ("negative_prompt_embeds", torch.zeros(1, 32, 32))]:  # fmt: skip
        with pytest.raises(ValueError, match=key):
            ait2i.generate(pipe, PROMPT, SUBJECTS, **{key: value}, **KW)
    with pytest.raises(ValueError, match="over max_sequence_length=4"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, **dict(KW, max_sequence_length=4))
    with pytest.raises(ValueError, match="attention_mask"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, joint_attention_kwargs={"attention_mask": torch.ones(1, 288)}, **KW)
    with pytest.raises(ValueError, match="only with true_cfg_scale > 1"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, negative_prompt="blurry", **KW)
    with pytest.raises(ValueError, match="has no effect without a negative prompt"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, true_cfg_scale=3.0, **KW)
    for same in (PROMPT, ""):  # the same words, or empty (the pipeline reads `prompt_2 or prompt`), are fine
        ok = ait2i.generate(pipe, PROMPT, SUBJECTS, prompt_2=same, generator=gen(), **KW)
        assert ok.diagnostics.steps
    from diffusers import EulerDiscreteScheduler

    saved = pipe.scheduler
    try:
        pipe.scheduler = EulerDiscreteScheduler()
        with pytest.raises(TypeError, match="EulerDiscreteScheduler is not supported"):
            ait2i.generate(pipe, PROMPT, SUBJECTS, **KW)
    finally:
        pipe.scheduler = saved
    before = dict(pipe.transformer.attn_processors)
    pipe.transformer.fuse_qkv_projections()
    try:
        with pytest.raises(ValueError, match="unfuse_qkv_projections"):
            ait2i.generate(pipe, PROMPT, SUBJECTS, **KW)
    finally:
        pipe.transformer.unfuse_qkv_projections()
        pipe.transformer.set_attn_processor(before)


def test_without_t5_is_refused():
    pipe = tiny_flux_pipeline()
    pipe.text_encoder_2 = None
    with pytest.raises(TypeError, match="needs the T5 encoder"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, **KW)


def test_cli_on_a_saved_flux_folder(pipe, tmp_path, capsys):
    from ait2i.cli import main
    from ait2i.io import read_png_params

    folder = tmp_path / "flux"
    pipe.save_pretrained(folder)
    assert main(["tokens", PROMPT, "--model", str(folder)]) == 0
    table = capsys.readouterr().out
    assert "\u2581car" in table and "</s>" in table  # T5's tokens, not CLIP's
    out = tmp_path / "img.png"
    argv = ["generate", PROMPT, "--subjects", "red car", "blue bench", "--model", str(folder), "--steps", "2",
            "--height", "32", "--width", "32", "--seed", "0", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    params = read_png_params(out)
    assert params["guidance_scale"] == 3.5  # FluxPipeline's own default
    assert [s["tokens"] for s in params["subject_tokens"]] == [[2], [6]]


def test_gradient_checkpointing_and_caches_are_refused_up_front():
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    pipe = tiny_flux_pipeline()
    pipe.transformer.enable_gradient_checkpointing()
    with pytest.raises(ValueError, match="disable_gradient_checkpointing"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, **KW)
    pipe.transformer.disable_gradient_checkpointing()
    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=10.0))
    with pytest.raises(ValueError, match="cache hooks"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, **KW)


def test_cli_true_cfg_scale_reaches_the_pipeline(pipe, tmp_path, capsys):
    from ait2i.cli import main
    from ait2i.io import read_png_params

    folder = tmp_path / "flux"
    pipe.save_pretrained(folder)
    base = ["generate", PROMPT, "--subjects", "red car", "blue bench", "--model", str(folder), "--steps", "2",
            "--height", "32", "--width", "32", "--quiet", "--negative-prompt", "blurry"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "bad.png")]) == 2  # a negative prompt Flux would ignore
    assert "true_cfg_scale" in capsys.readouterr().err and not (tmp_path / "bad-0.png").exists()
    assert main([*base, "--true-cfg-scale", "3", "--out", str(tmp_path / "ok.png")]) == 0, capsys.readouterr().err
    assert read_png_params(tmp_path / "ok.png")["true_cfg_scale"] == 3.0
