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
    assert torch.load(out / "ckpt.pt", weights_only=False)["step"] == 3
    T.main([*args, "--steps", "5", "--resume"])
    info = json.loads((out / "pipeline" / "TRAINING.json").read_text())
    assert info["steps"] == 5 and [r["start_step"] for r in info["runs"]] == [0, 3]
    assert not (out / "pipeline.tmp").exists() and not (out / "ckpt.tmp").exists()
