"""Tests of the ShapesWorld model: the shipped diffusers folder, its architecture, export and training plumbing."""

from __future__ import annotations

import json

import pytest
import torch

from ait2i.shapes import model as M
from ait2i.shapes import train as T

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped():
    from diffusers import StableDiffusionPipeline

    folder = M.pretrained_dir()
    assert (folder / "model_index.json").is_file(), f"no shipped model in {folder}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        pipe = StableDiffusionPipeline.from_pretrained(str(folder))  # the plain call, no extra arguments
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_folder_is_small_and_recorded():
    folder = M.pretrained_dir()
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total <= 30 * 2**20, f"shipped model is {total / 2**20:.1f} MiB"
    info = json.loads((folder / "TRAINING.json").read_text())
    assert {"seed", "steps", "commit", "command"} <= set(info)
    assert all(p.suffix != ".bin" for p in folder.rglob("*"))  # safetensors only


def test_shipped_loads_with_plain_from_pretrained(shipped):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(shipped.unet, UNet2DConditionModel)
    assert isinstance(shipped.vae, AutoencoderKL)
    assert isinstance(shipped.text_encoder, CLIPTextModel)
    assert shipped.safety_checker is None
    assert shipped.vae_scale_factor == 1
    assert {m.dtype for m in (shipped.unet, shipped.vae, shipped.text_encoder)} == {torch.float32}
    assert shipped.unet.config.sample_size == 32


def test_tokenizer_is_sd_clip(shipped):
    from ait2i.testing import clip_tokenizer

    ref = clip_tokenizer()
    assert shipped.tokenizer("a red circle").input_ids == [49406, 320, 736, 7117, 49407]
    for prompt in ("a red circle and a blue square", "a cyan triangle, a purple circle and a yellow square", ""):
        assert shipped.tokenizer(prompt).input_ids == ref(prompt).input_ids
    padded = shipped.tokenizer("a red circle", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[5:] == [49407] * 72
    assert shipped.tokenizer.model_max_length == 77


class _Recorder:
    """Attention processor that records the query length of every cross-attention call."""

    def __init__(self, inner, seen: list[int]):
        self.inner, self.seen = inner, seen

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            self.seen.append(hidden_states.shape[1])
        return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


def test_cross_attention_at_16_and_8_and_a_short_generation(shipped):
    from diffusers.models.attention_processor import AttnProcessor2_0

    seen: list[int] = []
    original = shipped.unet.attn_processors
    shipped.unet.set_attn_processor({k: _Recorder(AttnProcessor2_0(), seen) for k in original})
    try:
        out = shipped(
            "a red circle", num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np"
        )
    finally:
        shipped.unet.set_attn_processor(original)
    assert out.images.shape == (1, 32, 32, 3)
    assert set(seen) == {16 * 16, 8 * 8}
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0


def test_load_pipeline_schedulers():
    from diffusers import DDIMScheduler, PNDMScheduler

    ddim = M.load_pipeline()
    assert isinstance(ddim.scheduler, DDIMScheduler)
    assert ddim.scheduler.config.prediction_type == "v_prediction"
    pndm = M.load_pipeline(scheduler="pndm")
    assert isinstance(pndm.scheduler, PNDMScheduler) and pndm.scheduler.config.skip_prk_steps
    assert pndm.scheduler.config.beta_schedule == ddim.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    img = pndm("a blue square", num_inference_steps=3, output_type="np").images
    assert img.shape == (1, 32, 32, 3)


def test_load_pipeline_bad_input(tmp_path):
    with pytest.raises(ValueError, match="model_index.json"):
        M.load_pipeline(tmp_path)
    with pytest.raises(ValueError, match="scheduler"):
        M.load_pipeline(scheduler="euler")
    with pytest.raises(ValueError, match="scheduler"):
        M.build_scheduler("euler")


def test_export_round_trip_is_float16_on_disk_and_float32_loaded(tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    from ait2i.testing import clip_tokenizer

    torch.manual_seed(0)
    unet, te, vae = M.build_unet(), M.build_text_encoder(), M.build_vae()
    T.export(tmp_path, unet, te, vae, clip_tokenizer(), {"seed": 0, "steps": 0})
    folder = tmp_path / "pipeline"
    assert not (tmp_path / "pipeline.tmp").exists()
    for sub in ("unet", "text_encoder", "vae"):
        (f,) = (folder / sub).glob("*.safetensors")
        with safe_open(str(f), "pt") as st:
            assert {st.get_tensor(k).dtype for k in st.keys()} == {torch.float16}
    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    assert pipe.text_encoder.dtype == torch.float32
    got = pipe.unet.state_dict()["conv_in.weight"]
    assert torch.equal(got, unet.state_dict()["conv_in.weight"].half().float())
    # exporting again replaces the folder
    T.export(tmp_path, unet, te, vae, clip_tokenizer(), {"seed": 0, "steps": 1})
    assert json.loads((folder / "TRAINING.json").read_text())["steps"] == 1


def test_batches_are_deterministic_per_step():
    x1, c1 = T.make_batch(0, 5, 8, 0.1)
    x2, c2 = T.make_batch(0, 5, 8, 0.1)
    x3, _ = T.make_batch(0, 6, 8, 0.1)
    assert torch.equal(x1, x2) and c1 == c2 and not torch.equal(x1, x3)
    assert x1.shape == (8, 3, 32, 32) and x1.min() >= -1 and x1.max() <= 1
    _, caps = T.make_batch(1, 0, 400, 0.1)
    assert 0.05 < caps.count("") / 400 < 0.15


def test_lr_schedule():
    args = T.parse_args(["--out", "x", "--steps", "1000", "--warmup", "100", "--lr", "1e-3"])
    assert T.lr_at(0, args) == pytest.approx(1e-5)
    assert T.lr_at(500, args) == pytest.approx(1e-3)
    assert T.lr_at(999, args) == pytest.approx(1e-4, rel=0.01)
    with pytest.raises(ValueError, match="cfg-drop"):
        T.parse_args(["--out", "x", "--cfg-drop", "1.5"])


def test_vae_is_a_near_identity_on_renders(shipped):
    psnr = T.vae_psnr(shipped.vae, n=32)
    assert psnr > 30.0, f"autoencoder reconstruction PSNR {psnr:.1f} dB"


def test_train_cli_runs_checkpoints_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "write_samples", lambda *a, **k: None)  # sampling is slow and covered above
    out = tmp_path / "run"
    args = ["--out", str(out), "--batch-size", "4", "--vae-steps", "2", "--threads", "1", "--warmup", "1"]
    with pytest.raises(ValueError, match="--resume"):
        T.main([*args, "--steps", "3", "--resume"])
    T.main([*args, "--steps", "3"])
    info = json.loads((out / "pipeline" / "TRAINING.json").read_text())
    assert info["steps"] == 3 and info["seed"] == 0 and info["vae_psnr_db"] is not None
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 3
    T.main([*args, "--steps", "5", "--resume"])
    info = json.loads((out / "pipeline" / "TRAINING.json").read_text())
    assert info["steps"] == 5 and [r["start_step"] for r in info["runs"]] == [0, 3]
    assert not (out / "pipeline.tmp").exists() and not (out / "ckpt.tmp").exists()


# ---- the MM-DiT (SD3-family) ShapesWorld model: --arch mmdit ----------------------------------------------------

_TINY = ["--width", "64", "--layers", "2", "--text-width", "32"]


def test_mmdit_components_from_configs():
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    te, te2 = M.build_sd3_text_encoders()
    assert isinstance(te, CLIPTextModelWithProjection) and isinstance(te2, CLIPTextModelWithProjection)
    tr = M.build_mmdit()
    assert isinstance(tr, SD3Transformer2DModel)
    c = tr.config
    assert c.sample_size == 32 and c.patch_size == 2 and c.in_channels == c.out_channels == M.LATENT_CHANNELS
    assert c.joint_attention_dim == te.config.hidden_size + te2.config.hidden_size
    assert c.pooled_projection_dim == te.config.projection_dim + te2.config.projection_dim
    assert c.caption_projection_dim == c.num_attention_heads * c.attention_head_dim
    # DiT initialisation: the blocks start as the identity and the model predicts 0
    out = tr(torch.randn(1, 3, 32, 32), torch.randn(1, 78, c.joint_attention_dim), torch.randn(1, 96), torch.ones(1))
    assert out.sample.shape == (1, 3, 32, 32) and out.sample.abs().max() == 0
    vae = M.load_shipped_vae()
    assert vae.config.shift_factor == 0.0 and vae.config.scaling_factor == 1.0
    assert vae.config.latent_channels == c.in_channels
    size = 2 * sum(p.numel() for m in (tr, te, te2, vae) for p in m.parameters())  # float16 bytes
    assert size + 2 * 3.7e6 < 30 * 2**20  # + two tokenizer files


def test_mmdit_pad_token_processor_is_exact():
    """Training's one weighted zero token gives the pipeline's output with 256 zero "T5" tokens."""
    torch.manual_seed(0)
    te, te2 = M.build_sd3_text_encoders(width=32, layers=2)
    tr = M.build_mmdit(width=64, layers=2, text_width=32, init=False)
    x, ids, t = torch.randn(2, 3, 32, 32), torch.randint(0, 49408, (2, 77)), torch.tensor([200.0, 900.0])
    with torch.no_grad():
        ctx, pooled = M.sd3_condition(te, te2, ids, n_pad=M.T5_PAD_TOKENS)
        ref = tr(x, ctx, pooled, t).sample
        tr.set_attn_processor(M.PadTokenJointAttnProcessor(M.T5_PAD_TOKENS))
        ctx1, pooled1 = M.sd3_condition(te, te2, ids, n_pad=1)
        got = tr(x, ctx1, pooled1, t).sample
    assert ctx.shape[1] == 77 + M.T5_PAD_TOKENS and ctx1.shape[1] == 78
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_mmdit_condition_matches_sd3_encode_prompt(tmp_path):
    from ait2i.testing import clip_tokenizer

    torch.manual_seed(0)
    te, te2 = M.build_sd3_text_encoders(width=32, layers=2)
    pipe = T.build_sd3_pipeline(
        M.build_mmdit(width=64, layers=1, text_width=32), te, te2, M.load_shipped_vae(), clip_tokenizer()
    )
    with torch.no_grad():
        pe, _, pooled, _ = pipe.encode_prompt("a red circle", None, None, do_classifier_free_guidance=False)
        ids = T.Tokens(clip_tokenizer())(["a red circle"])
        ctx, pooled2 = M.sd3_condition(te, te2, ids, n_pad=M.T5_PAD_TOKENS)
    torch.testing.assert_close(pe, ctx)
    torch.testing.assert_close(pooled, pooled2)


def test_mmdit_resume_equals_uninterrupted_and_weights_only(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "write_samples", lambda *a, **k: None)
    base = ["--arch", "mmdit", "--batch-size", "2", "--threads", "1", "--warmup", "1", *_TINY]
    T.main([*base, "--out", str(tmp_path / "a"), "--steps", "4"])
    T.main([*base, "--out", str(tmp_path / "b"), "--steps", "2"])
    T.main([*base, "--out", str(tmp_path / "b"), "--steps", "4", "--resume"])
    a = torch.load(tmp_path / "a" / "ckpt.pt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "b" / "ckpt.pt", map_location="cpu", weights_only=True)
    assert a["step"] == b["step"] == 4 and a["args"]["arch"] == "mmdit"
    for k in ("transformer", "text_encoder", "text_encoder_2", "ema_transformer", "ema_text_encoder_2"):
        assert a[k].keys() == b[k].keys()
        for n in a[k]:
            torch.testing.assert_close(a[k][n], b[k][n], atol=1e-6, rtol=1e-5, msg=f"{k}.{n}")
    for sa, sb in zip(a["opt"]["state"].values(), b["opt"]["state"].values()):
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], atol=1e-9, rtol=1e-5)
    assert [r["start_step"] for r in b["history"]["runs"]] == [0, 2]
    with pytest.raises(ValueError, match="--arch mmdit"):
        T.main(["--out", str(tmp_path / "b"), "--steps", "5", "--resume", "--threads", "1"])  # unet on mmdit ckpt


def test_mmdit_export_loads_with_sd3_pipeline_and_generates(tmp_path, monkeypatch):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    monkeypatch.setattr(T, "write_samples", lambda *a, **k: None)
    T.main(["--arch", "mmdit", "--out", str(tmp_path), "--batch-size", "2", "--steps", "1", "--threads", "1", *_TINY])
    folder = tmp_path / "pipeline"
    info = json.loads((folder / "TRAINING.json").read_text())
    assert info["arch"] == "mmdit" and info["steps"] == 1 and info["vae_psnr_db"] > 30
    assert all(p.suffix != ".bin" for p in folder.rglob("*"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), text_encoder_3=None, tokenizer_3=None)
    assert isinstance(pipe.transformer, SD3Transformer2DModel)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.text_encoder.dtype == pipe.text_encoder_2.dtype == pipe.transformer.dtype == torch.float32
    assert pipe.vae.config.shift_factor == 0.0
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert img.size == (32, 32)
    assert M.load_sd3_pipeline(folder)("a blue square", num_inference_steps=1, output_type="np").images.shape == (
        1, 32, 32, 3,
    )  # fmt: skip


def test_arch_options():
    args = T.parse_args(["--out", "x"])
    assert (args.arch, args.steps, args.lr, args.vae_steps, args.width) == ("unet", 3000, 7e-4, 800, None)
    args = T.parse_args(["--out", "x", "--arch", "mmdit"])
    assert args.vae_steps == 0 and args.width == M.MMDIT_WIDTH and args.layers == M.MMDIT_LAYERS
    with pytest.raises(ValueError, match="mmdit only"):
        T.parse_args(["--out", "x", "--width", "64"])
    with pytest.raises(ValueError, match="vae-steps"):
        T.parse_args(["--out", "x", "--arch", "mmdit", "--vae-steps", "10"])
