"""Warm-starting the ShapesWorld MM-DiT from an exported folder (``--init-from``) and the training mix (``--mix``)."""

import pytest
import torch

from ait2i.shapes import model as M
from ait2i.shapes import render as R
from ait2i.shapes import train as T


def test_mix_is_validated():
    assert T.parse_args(["--arch", "mmdit", "--out", "x"]).mix == tuple(R.TRAINING_MIX)
    assert T.parse_args(["--arch", "mmdit", "--out", "x", "--mix", "0.2,0.5,0.3"]).mix == (0.2, 0.5, 0.3)
    for bad in ("0.5,0.5", "0.5,0.6,0.1", "a,b,c", "nan,0.5,0.5", "-0.1,0.6,0.5"):
        with pytest.raises(ValueError, match="--mix"):
            T.parse_args(["--arch", "mmdit", "--out", "x", f"--mix={bad}"])


def test_mix_changes_the_object_counts():
    counts = {n: 0 for n in (1, 2, 3)}
    for i in range(400):
        counts[len(R.sample_training_scene(i, (0.0, 0.0, 1.0)).objects)] += 1
    assert counts == {1: 0, 2: 0, 3: 400}


def test_init_from_refusals(tmp_path):
    shipped = str(M.pretrained_mmdit_dir())
    with pytest.raises(ValueError, match="mmdit only"):
        T.parse_args(["--out", "x", "--init-from", shipped])
    with pytest.raises(ValueError, match="give one of them"):
        T.parse_args(["--arch", "mmdit", "--out", "x", "--init-from", shipped, "--resume"])
    with pytest.raises(ValueError, match="--width: the shape comes from the --init-from model"):
        T.parse_args(["--arch", "mmdit", "--out", "x", "--init-from", shipped, "--width", "256"])
    with pytest.raises(ValueError, match="not an exported pipeline folder"):
        T.parse_args(["--arch", "mmdit", "--out", "x", "--init-from", str(tmp_path)])


@pytest.mark.slow
def test_init_from_starts_from_the_exported_weights():
    shipped = M.pretrained_mmdit_dir()
    args = T.parse_args(["--arch", "mmdit", "--out", "x", "--init-from", str(shipped)])
    arch = T.MMDiTArch(args, None)
    from diffusers import SD3Transformer2DModel

    ref = SD3Transformer2DModel.from_pretrained(shipped / "transformer", torch_dtype=torch.float32)
    for (name, p), (_, q) in zip(arch.models["transformer"].named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), name
    ema = dict(arch.emas["transformer"].named_parameters())
    assert all(torch.equal(ema[n], p) for n, p in ref.named_parameters())
    assert args.layers == ref.config.num_layers and all(p.dtype == torch.float32 for p in ref.parameters())


@pytest.mark.slow
def test_no_pooled_cuts_the_pooled_path_and_stays_cut():
    shipped = M.pretrained_mmdit_dir()
    args = T.parse_args(["--arch", "mmdit", "--out", "x", "--init-from", str(shipped), "--no-pooled"])
    arch = T.MMDiTArch(args, None)
    tr = arch.emas["transformer"]
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 78, 96, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500.0])
    with torch.no_grad():
        a = tr(x, ctx, torch.randn(1, 96), t).sample
        b = tr(x, ctx, torch.randn(1, 96) * 5, t).sample
    assert torch.equal(a, b)  # the pooled vector no longer matters
    w = arch.models["transformer"].time_text_embed.text_embedder.linear_1.weight
    assert not w.requires_grad and not w.any()
    with pytest.raises(ValueError, match="mmdit only"):
        T.parse_args(["--out", "x", "--no-pooled"])


def test_deny_summary_is_validated():
    base = ["--arch", "mmdit", "--out", "x", "--no-pooled"]
    assert T.parse_args([*base, "--deny-summary", "0.5"]).deny_summary == 0.5
    for bad in ("-0.1", "1.5", "nan"):
        with pytest.raises(ValueError, match="--deny-summary must be a probability"):
            T.parse_args([*base, "--deny-summary", bad])
    with pytest.raises(ValueError, match="--deny-summary needs --no-pooled"):
        T.parse_args(["--arch", "mmdit", "--out", "x", "--deny-summary", "0.5"])


def test_deny_summary_replaces_the_states_from_the_end_token_on_and_nothing_else():
    tok = M.clip_tokenizer()
    ids = tok(
        ["a red circle", "a red circle and a blue square", ""], padding="max_length", max_length=77,
        return_tensors="pt",
    ).input_ids  # fmt: skip
    ctx = torch.randn(3, 78, 8, generator=torch.Generator().manual_seed(0))
    empty = torch.randn(1, 78, 8, generator=torch.Generator().manual_seed(1))
    empty[:, 77:] = ctx[0, 77:]  # the zero "T5" token is the same in both
    out = T.deny_summary(ctx, empty, ids, tok.eos_token_id, torch.tensor([True, False, True]))
    n_words = [len(tok("a red circle").input_ids) - 1, None, 1]  # BOS + words, before the end token
    assert torch.equal(out[0, : n_words[0]], ctx[0, : n_words[0]])  # words (and BOS) kept
    assert torch.equal(out[0, n_words[0] : 77], empty[0, n_words[0] : 77])  # end + padding replaced
    assert torch.equal(out[1], ctx[1])  # a row not drawn is untouched
    assert torch.equal(out[2, :1], ctx[2, :1]) and torch.equal(out[2, 1:77], empty[0, 1:77])
    assert torch.equal(out[:, 77:], ctx[:, 77:])


@pytest.mark.slow
def test_arch_condition_denies_the_summary_of_the_drawn_captions_only():
    tok = M.clip_tokenizer()
    shipped = str(M.pretrained_mmdit_dir())
    base = ["--arch", "mmdit", "--out", "x", "--init-from", shipped, "--no-pooled"]
    arch = T.MMDiTArch(T.parse_args([*base, "--deny-summary", "1.0"]), tok)
    ids = T.Tokens(tok)(["a red circle and a blue square", ""])
    with torch.no_grad():
        ctx, _ = arch.condition(ids, torch.Generator().manual_seed(0))
        full, _ = M.sd3_condition(arch.models["text_encoder"], arch.models["text_encoder_2"], ids, n_pad=1)
    n = int((ids[0] == tok.eos_token_id).nonzero()[0])  # the end token's position
    assert torch.equal(ctx[0, :n], full[0, :n])  # the words are the caption's own
    torch.testing.assert_close(ctx[0, n:77], full[1, n:77])  # from the end token on: the empty caption's
    assert not torch.allclose(full[0, n:77], full[1, n:77])  # (which differ from the caption's own)
    keep = T.MMDiTArch(T.parse_args([*base, "--deny-summary", "0.0"]), tok)
    with torch.no_grad():
        same, _ = keep.condition(ids, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, full)
