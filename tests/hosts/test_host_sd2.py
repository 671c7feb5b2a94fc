"""SD 2.x conventions on a tiny v-prediction pipeline whose tokenizer pads with "!" (id 0), as SD 2.x's does.

SD 1.x pads the 77-token sequence with the end-of-text token; SD 2.x (OpenCLIP vocabulary through CLIPTokenizer)
pads with "!" and, "!" being a special token there, also reads a literal "!" of the prompt as that one token. The
end token, the subjects and the Attend-and-Excite softmax span must stay right.
"""

import pytest
import torch

import ait2i
from ait2i.subjects import end_token_index, prompt_tokens, resolve_subjects
from ait2i.testing import clip_tokenizer, clip_tokenizer_dir, make_scheduler, tiny_sd_components

pytestmark = pytest.mark.slow


def sd2_tokenizer():
    from transformers import CLIPTokenizer

    d = clip_tokenizer_dir()
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), pad_token="!", model_max_length=77)


def sd2_components(seed=0):
    """Tiny SD 2.x-like components: v-prediction DDIM, "!"-padding tokenizer, text encoder with pad id 0."""
    from diffusers import DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    comps = tiny_sd_components(seed=seed)
    comps["scheduler"] = DDIMScheduler.from_config(make_scheduler().config, prediction_type="v_prediction")
    comps["tokenizer"] = sd2_tokenizer()
    torch.manual_seed(seed)
    comps["text_encoder"] = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=49406, eos_token_id=49407, pad_token_id=0, vocab_size=49408, hidden_size=32,
            intermediate_size=37, num_attention_heads=4, num_hidden_layers=5, hidden_act="gelu",
        )
    )  # fmt: skip
    return comps


def sd2_pipeline(seed=0):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**sd2_components(seed), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# -- the tokenizer ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["a cat and a dog", "a cat! and a dog!!", "a red car and a blue!bench"])
def test_end_token_is_where_the_encoder_sees_it(prompt):
    tok = sd2_tokenizer()
    ids = tok(prompt, padding="max_length", max_length=77).input_ids  # what the pipeline feeds the encoder
    eot = end_token_index(tok, prompt)
    assert ids[eot] == tok.eos_token_id and ids[eot + 1 :] == [0] * (76 - eot)  # "!" padding after it
    assert tok.eos_token_id not in ids[1:eot]


def test_subjects_resolve_with_bang_padding():
    tok = sd2_tokenizer()
    # a literal "!" is the pad token "!" here (one piece, no end-of-word marker): it ends its word, is no subject
    # word, and the words after it keep their own pieces
    prompt = "a cat! and a!dog"
    assert [t for _, t in prompt_tokens(tok, prompt)][1:-1] == ["a</w>", "cat</w>", "!", "and</w>", "a</w>", "!",
                                                                 "dog</w>"]  # fmt: skip
    cat, dog = resolve_subjects(tok, prompt, ["cat", "dog"])
    assert cat.tokens == (2,) and dog.tokens == (7,)
    # without "!" in the prompt the indices are SD 1.x's
    p = "a red car and a blue bench"
    sd1 = resolve_subjects(clip_tokenizer(), p, ["red car", "blue bench"])
    assert resolve_subjects(tok, p, ["red car", "blue bench"]) == sd1
    assert end_token_index(tok, p) == end_token_index(clip_tokenizer(), p) == 8
    with pytest.raises(ValueError, match="names no word"):
        resolve_subjects(tok, prompt, ["!"])


def test_softmax_span_ends_before_the_padding():
    from ait2i.losses import ane_view

    tok = sd2_tokenizer()
    eot = end_token_index(tok, "a cat and a dog")
    raw = torch.rand(1, 4, 4, 77)
    prompt_span = ane_view(raw, eot, "prompt")
    assert (prompt_span[..., eot:] == 0).all() and torch.allclose(prompt_span[..., 1:eot].sum(-1), torch.ones(1, 4, 4))
    all_span = ane_view(raw, eot, "all")  # diffusers' maps[..., 1:-1]: the "!" padding tokens enter the softmax
    assert (all_span[..., [0, 76]] == 0).all() and (all_span[..., eot + 1 : 76] > 0).all()


# -- the pipeline -------------------------------------------------------------------------------------------------
def test_none_equals_stock_and_guided_runs_on_v_prediction():
    pipe = sd2_pipeline()
    kw = dict(num_inference_steps=4, output_type="np")
    stock = pipe("a cat! and a dog", generator=_gen(0), **kw).images
    rec = ait2i.generate(pipe, "a cat! and a dog", ["cat", "dog"], "none", record_maps=(0, 3), generator=_gen(0), **kw)
    assert (rec.images == stock).all() and sorted(rec.diagnostics.maps) == [0, 3]
    out = ait2i.generate(pipe, "a cat! and a dog", ["cat", "dog"], "ait2i-paper", generator=_gen(0), **kw)
    assert all(torch.isfinite(torch.tensor(r.loss)).all() for r in out.diagnostics.steps)
    assert not (out.images == stock).all()


@pytest.mark.parametrize("prompt,indices", [("a cat and a dog", [2, 5]), ("a cat! and a dog", [2, 6])])
def test_attend_and_excite_matches_diffusers_on_sd2(prompt, indices):
    from diffusers import StableDiffusionAttendAndExcitePipeline

    steps = 30  # thresholds at steps 0, 10, 20 and the first 25 steps guided, as in the reference
    comps = sd2_components()
    comps.pop("image_encoder")
    ref_pipe = StableDiffusionAttendAndExcitePipeline(**comps, requires_safety_checker=False)
    ref_pipe.set_progress_bar_config(disable=True)
    ref = ref_pipe(prompt, token_indices=indices, num_inference_steps=steps, generator=_gen(1), output_type="latent")
    out = ait2i.generate(
        sd2_pipeline(), prompt, indices, "attend-and-excite", num_inference_steps=steps, generator=_gen(1),
        output_type="latent",
    )  # fmt: skip
    start = torch.randn(ref.images.shape, generator=_gen(1))
    assert (ref.images - start).abs().max() > 1e-2  # the reference did change the latents
    torch.testing.assert_close(out.images, ref.images, rtol=1e-4, atol=1e-4)
    assert sum(sum(r.refinement_iterations) for r in out.diagnostics.steps) > 0  # refinement really ran
