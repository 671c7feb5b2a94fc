"""The PixArt hosts (``PixArtAlphaPipeline``, ``PixArtSigmaPipeline``) on tiny random pipelines built from configs,
with the tiny SentencePiece T5 tokenizer of ``tests/data/t5-tokenizer`` (made by ``tests/data/make_t5_tokenizer.py``).

Random tiny models have near-uniform attention, so these tests check correctness (guidance off = the stock pipeline
bit for bit, guided runs record finite losses and move the latents, the guided pass sees what the denoiser sees,
the capture respects T5's padding mask, state restored, refusals) and SentencePiece subjects.
"""

import dataclasses
from pathlib import Path

import pytest
import torch
from transformer_host_checks import (
    method_moves_the_latents,
    none_with_maps_equals_stock,
    two_images_with_refinement_rows,
)

import ait2i
from ait2i.hosts.pixart import PixArtAlphaHost, PixArtSigmaHost
from ait2i.losses import ane_view, check_subjects
from ait2i.subjects import EndToken, TokenLayout, end_token_index, prompt_tokens, resolve_subjects, token_layout
from ait2i.testing import tiny_pixart_pipeline, unmoved

pytestmark = pytest.mark.slow

T5_DIR = Path(__file__).parents[1] / "data" / "t5-tokenizer"
PROMPT, SUBJECTS = "a red car and a blue bench", ["red car", "blue bench"]
KW = dict(num_inference_steps=4, output_type="latent", clean_caption=False)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def t5_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(T5_DIR)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pixart_pipeline()


def _no_leftovers(pipe, before):
    assert dict(pipe.transformer.attn_processors) == before
    assert not {"encode_prompt", "prepare_latents", "check_inputs", "get_timesteps"} & set(vars(pipe))
    assert "step" not in vars(pipe.scheduler)


# -- SentencePiece subjects and the token layout ------------------------------------------------------------------
def test_sentencepiece_subjects_resolve_on_words():
    tok = t5_tokenizer()
    assert token_layout(tok) == TokenLayout(first=0, marker="\u2581", marker_starts_word=True)
    assert dict(prompt_tokens(tok, "a red car")) == {0: "\u2581a", 1: "\u2581red", 2: "\u2581car", 3: "</s>"}
    assert end_token_index(tok, "a red car") == 3 and end_token_index(tok, "a red car").layout.first == 0
    (car,) = resolve_subjects(tok, "a red car", ["red car"])
    assert car.tokens == (2,) and car.attributes == (1,) and car.label == "red car"
    # a multi-piece word ("▁s" "ur" "f" "b" "oard"), punctuation glued to a word ("▁dog" "."), occurrences
    prompt = "a surfboard and a dog. a dog"
    toks = dict(prompt_tokens(tok, prompt))
    board, dog = resolve_subjects(tok, prompt, ["surfboard", "dog#1"])
    assert [toks[i] for i in board.tokens] == ["\u2581s", "ur", "f", "b", "oard"]
    assert [toks[i] for i in dog.tokens] == ["\u2581dog"] and toks[dog.tokens[0] + 1] == "."
    assert board.label == "surfboard"
    # a word whose marker stands alone ("▁" "h" "y" ...) keeps it
    (hydrant,) = resolve_subjects(tok, "a hydrant", ["hydrant"])
    assert dict(prompt_tokens(tok, "a hydrant"))[hydrant.tokens[0]] == "\u2581"
    # indices: the first prompt token is 0, the end token is out
    assert resolve_subjects(tok, "a red car", [[0]])[0].tokens == (0,)
    with pytest.raises(ValueError, match=r"valid indices for this prompt are 0\.\.2 \(3 is the end token\)"):
        resolve_subjects(tok, "a red car", [3])


def test_losses_follow_the_layout_the_end_token_carries():
    raw = torch.rand(1, 4, 4, 10)
    masked = EndToken(4, TokenLayout(first=0, marker="\u2581", marker_starts_word=True, keys_after_end=False))
    view = ane_view(raw, masked, "all")  # tokens 0..4: the prompt and </s>; the masked padding is out
    assert torch.allclose(view[..., :5].sum(-1), torch.ones(1, 4, 4)) and not view[..., 5:].any()
    view = ane_view(raw, masked, "prompt")  # tokens 0..3
    assert torch.allclose(view[..., :4].sum(-1), torch.ones(1, 4, 4)) and not view[..., 4:].any()
    subject = type("S", (), {"label": "car", "tokens": (0,), "attributes": ()})()
    check_subjects(raw, [subject], "prompt", masked)
    with pytest.raises(ValueError, match=r"\[1, 8\]"):
        check_subjects(raw, [subject], "all", 5)  # CLIP's layout: 0 is the start token


# -- the host -----------------------------------------------------------------------------------------------------
def test_hosts_are_picked():
    assert ait2i.hosts.host_for(tiny_pixart_pipeline(num_layers=1)) is PixArtAlphaHost
    assert ait2i.hosts.host_for(tiny_pixart_pipeline("sigma", num_layers=1)) is PixArtSigmaHost
    assert {"PixArtAlphaPipeline", "PixArtSigmaPipeline"} <= set(ait2i.hosts.supported_pipelines())


@pytest.mark.parametrize("kind,scheduler", [("alpha", "dpm"), ("alpha", "ddim"), ("alpha", "euler"), ("sigma", "dpm")])
def test_none_with_maps_equals_stock(kind, scheduler):
    pipe = tiny_pixart_pipeline(kind, scheduler=scheduler)
    none_with_maps_equals_stock(pipe, KW, _no_leftovers)


@pytest.mark.parametrize("method", ["ait2i", "ait2i-paper", "attend-and-excite"])
def test_methods_run_record_finite_losses_and_move_the_latents(pipe, method):
    method_moves_the_latents(pipe, method, KW, _no_leftovers)


def test_two_images_per_prompt_with_refinement_rows(pipe):
    two_images_with_refinement_rows(pipe, KW)


@dataclasses.dataclass
class _Keep(ait2i.GuidanceConfig):
    """Records the raw capture; moves nothing."""

    raws: list = dataclasses.field(default_factory=list, repr=False)
    max_guided_steps: int | float = 1
    name: str = dataclasses.field(default="keep", repr=False)

    def loss(self, raw, subjects, eot_index):
        self.raws.append((raw.detach().clone(), eot_index))
        return raw.sum((1, 2, 3)) * 0, {}, raw.new_zeros(raw.shape[0], len(subjects))


def test_capture_respects_the_padding_mask_and_stops_after_the_last_read_block(pipe):
    tr = pipe.transformer
    ran = []
    hooks = [b.register_forward_hook(lambda m, a, o, k=k: ran.append(k)) for k, b in enumerate(tr.transformer_blocks)]
    cfg = _Keep(attn_res=None)
    try:
        ait2i.generate(pipe, PROMPT, SUBJECTS, cfg, generator=_gen(), **KW)
    finally:
        for h in hooks:
            h.remove()
    raw, eot = cfg.raws[0]
    assert raw.shape == (1, 16, 16, 120) and eot == 7 and eot.layout.first == 0 and not eot.layout.keys_after_end
    assert not raw[..., eot + 1 :].any()  # the padded keys: probability 0 exactly, as in the denoiser
    assert (raw[..., : eot + 1] > 0).all()
    assert torch.allclose(raw.sum(-1), torch.ones(1, 16, 16), atol=1e-5)
    # the first half of the 4 blocks is read; the guided pass ends inside block 1 (blocks 0 and 1 never finish
    # there, block 0 finishes); the pipeline's own pass runs all 4
    assert ran[:1] == [0] and ran[1:5] == [0, 1, 2, 3]


def test_guided_pass_sees_what_the_denoiser_sees():
    pipe = tiny_pixart_pipeline(sample_size=128)  # PixArt-α at 1024 px: micro-conditions (at 256 px here)
    calls = []

    def keep(module, args, kwargs):
        calls.append((torch.is_grad_enabled(), args, kwargs))

    hook = pipe.transformer.register_forward_pre_hook(keep, with_kwargs=True)
    none = dataclasses.replace(ait2i.get_method("none"), attn_res=None)  # a 16x12 grid: read as it is
    try:
        ait2i.generate(
            pipe, PROMPT, SUBJECTS, none, record_maps=(0,), generator=_gen(), height=256, width=192,
            use_resolution_binning=False, negative_prompt="a cat", **KW,
        )  # fmt: skip
    finally:
        hook.remove()
    (_, g_args, guided), (_, p_args, piped) = calls[:2]
    assert torch.equal(g_args[0], p_args[0][1:])  # the latents: the conditional half of the CFG batch
    assert torch.equal(guided["encoder_hidden_states"], piped["encoder_hidden_states"][1:])
    assert torch.equal(guided["encoder_attention_mask"], piped["encoder_attention_mask"][1:])
    assert torch.equal(guided["timestep"], piped["timestep"][1:])
    for key in ("resolution", "aspect_ratio"):
        assert torch.equal(guided["added_cond_kwargs"][key], piped["added_cond_kwargs"][key][1:])
    assert guided["added_cond_kwargs"]["resolution"].tolist() == [[256.0, 192.0]]


def test_resolution_binning_and_decoded_images(pipe):
    kw = dict(KW, output_type="np", height=240, width=256)  # binned by the pipeline, resized back at the end
    stock = pipe(PROMPT, generator=_gen(), **kw).images
    with pytest.raises(ValueError, match="token grid is 15x16"):  # a non-square bin: attn_res=16 cannot pool it
        fixed = ait2i.get_method("none").replace(attn_res=16)
        ait2i.generate(pipe, PROMPT, SUBJECTS, fixed, record_maps=(0,), generator=_gen(), **kw)
    rec = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0,), generator=_gen(), **kw)  # the default
    # attn_res=None reads a grid it cannot pool to 16x16 as it is
    assert (stock == rec.images).all() and rec.images.shape == (1, 240, 256, 3)
    assert rec.diagnostics.maps[0].shape == (1, 2, 15, 16)
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, "ait2i", generator=_gen(), **kw)
    assert out.images.shape == (1, 240, 256, 3) and len(out.diagnostics.steps) == 2  # ait2i guides half


def test_legacy_callback_sees_the_updated_latents_and_an_exception_restores_everything(pipe):
    seen = {}
    cfg = ait2i.AIT2IConfig(max_guided_steps=1.0)
    out = ait2i.generate(
        pipe, PROMPT, SUBJECTS, cfg, generator=_gen(), callback=lambda i, t, z: seen.update({i: z}), **KW
    )
    zero = unmoved(cfg)
    plain = {}
    ait2i.generate(pipe, PROMPT, SUBJECTS, zero, generator=_gen(), callback=lambda i, t, z: plain.update({i: z}), **KW)
    assert torch.equal(seen[3], out.images) and not torch.equal(seen[0], plain[0])
    before = dict(pipe.transformer.attn_processors)

    def boom(i, t, z):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, cfg, generator=_gen(), callback=boom, **KW)
    _no_leftovers(pipe, before)
    # and the pipeline still runs stock afterwards
    assert torch.equal(
        pipe(PROMPT, generator=_gen(), **KW).images,
        ait2i.generate(pipe, PROMPT, SUBJECTS, "none", generator=_gen(), **KW).images,
    )


def test_subject_phrases_follow_the_pipelines_lower_casing(pipe):
    out = ait2i.generate(pipe, "A Red car and a blue bench ", ["Red Car", "bench"], generator=_gen(), **KW)
    assert [s.tokens for s in out.diagnostics.subjects] == [(2,), (6,)]
    assert out.diagnostics.subjects[0].attributes == (1,)


def test_refusals(pipe, monkeypatch):
    with pytest.raises(ValueError, match="prompt_embeds"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, prompt_embeds=torch.zeros(1, 120, 32), **KW)
    with pytest.raises(ValueError, match="prompt_attention_mask"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, prompt_attention_mask=torch.ones(1, 120), **KW)
    with pytest.raises(ValueError, match="max_sequence_length=4"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, max_sequence_length=4, **KW)
    kw = {k: v for k, v in KW.items() if k != "clean_caption"}
    ait2i.generate(pipe, PROMPT, SUBJECTS, "none", **kw)  # cleaning leaves this prompt as it is: accepted
    monkeypatch.setattr(pipe, "_text_preprocessing", lambda text, clean_caption=False: ["a red auto and a bench"])
    with pytest.raises(ValueError, match="clean_caption=True rewrites the prompt"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, **kw)
    ait2i.generate(pipe, PROMPT, SUBJECTS, "none", **KW)  # clean_caption=False: the text is not cleaned
