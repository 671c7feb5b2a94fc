"""Trains the ShapesWorld model on the CPU and exports it as a diffusers folder.

    python -m ait2i.shapes.train --out train-runs/shapes-v1 --seed 0 --max-minutes 85 [--resume]
    python -m ait2i.shapes.train --arch mmdit --out train-runs/shapes-mmdit --seed 0 --max-minutes 110 --threads 1

``--arch unet`` (default) is the shipped model (``StableDiffusionPipeline``); ``--arch mmdit`` is its SD3-family
sibling (``StableDiffusion3Pipeline`` without T5): an ``SD3Transformer2DModel`` and two small CLIP text encoders
trained jointly on the rectified-flow objective (logit-normal timesteps, velocity ``noise - x0``), with the shipped
autoencoder reused frozen (``shift_factor`` 0.0 added to its config). See :mod:`ait2i.shapes.model`.

Every step draws a fresh batch from the renderer's training mix (deterministically from ``(seed, step)``, so a
resumed run sees the same data as an uninterrupted one), drops ~10% of the captions to "" for classifier-free
guidance, and trains the UNet and the text encoder jointly on the v-prediction objective (cosine schedule).
The autoencoder is trained on the side during the first ``--vae-steps`` steps to be a near-identity map on pixels
(encoder: image -> image; decoder: slightly noisy image -> clean image), then frozen; its reconstruction PSNR is
recorded. An EMA of the UNet and text encoder is what gets exported (for ``mmdit``: of the transformer and both
text encoders).

Outputs in ``--out``: ``ckpt.pt`` (models, EMA, optimizer, step; tensors and plain Python values only, read back
with ``torch.load(..., weights_only=True)``; written atomically), ``samples/`` (EMA sample
grids), ``pipeline/`` (the EMA model as a complete float16 diffusers folder with ``TRAINING.json``, replaced
atomically after every checkpoint), ``metrics.jsonl`` (loss log).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ait2i.shapes import model as M
from ait2i.shapes import render as R

SAMPLE_PROMPTS = [
    "a red circle", "a green square", "a blue triangle", "a yellow circle",
    "a purple triangle", "a cyan square", "a red circle and a blue square", "a green triangle and a yellow square",
    "a purple circle and a cyan triangle", "a blue circle and a red circle", "a green square and a purple square",
    "a yellow triangle", "a cyan circle", "a purple square", "a red square, a blue circle and a green triangle",
    "a yellow triangle and a cyan circle",
]  # fmt: skip


# Per-architecture defaults of the options left unset (``--arch unet``: the shipped model's run).
ARCH_DEFAULTS = {
    "unet": {"steps": 3000, "lr": 7e-4, "warmup": 200, "ema": 0.999, "vae_steps": 800},
    "mmdit": {
        "steps": 3000, "lr": 6e-4, "warmup": 200, "ema": 0.999, "vae_steps": 0,
        "width": M.MMDIT_WIDTH, "layers": M.MMDIT_LAYERS, "text_width": M.SD3_TEXT_WIDTH,
    },
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=sorted(ARCH_DEFAULTS), default="unet", help="unet (SD 1.x) or mmdit (SD3)")
    p.add_argument("--out", required=True, help="run folder (checkpoint, samples, exported pipeline)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=85.0, help="wall-clock budget of this invocation")
    p.add_argument("--steps", type=int, default=None, help="planned steps; the LR schedule decays towards it")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--ema", type=float, default=None, help="EMA decay (ramped up from 0 early in training)")
    p.add_argument("--cfg-drop", type=float, default=0.1, help="probability of an empty caption")
    p.add_argument(
        "--vae-steps", type=int, default=None, help="steps during which the autoencoder trains (unet; mmdit: 0)"
    )
    p.add_argument("--width", type=int, default=None, help="mmdit: transformer width (heads x 32)")
    p.add_argument("--layers", type=int, default=None, help="mmdit: transformer blocks")
    p.add_argument("--text-width", type=int, default=None, help="mmdit: width of each CLIP text encoder")
    p.add_argument("--ckpt-minutes", type=float, default=10.0)
    p.add_argument("--sample-minutes", type=float, default=15.0)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads; 0 = adaptive: every 200 steps, time 20 steps on 1 and on 2 threads, keep the faster",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    p.add_argument(
        "--init-from",
        default=None,
        help="mmdit: warm-start from an exported pipeline folder (e.g. the shipped src/ait2i/shapes/pretrained_mmdit): "
        "its transformer and text encoders start the models and their EMA; optimizer and LR schedule start fresh "
        "(with --warmup). A new run: its steps count from 0",
    )
    p.add_argument(
        "--no-pooled",
        action="store_true",
        help="mmdit: cut the pooled CLIP vector's path (the weight of time_text_embed.text_embedder.linear_1 held at "
        "zero), so the caption reaches the image only through the word tokens in joint attention, as SD3's T5 "
        "tokens do; the exported model ignores the pooled vector the unmodified pipeline passes",
    )
    p.add_argument(
        "--deny-summary",
        type=float,
        default=0.0,
        metavar="P",
        help="mmdit, with --no-pooled: for a fraction P of the captions, the text states from the end token on are "
        "replaced by the empty caption's, so the caption reaches the image only through its word tokens (CLIP is "
        "causal: its end and padding states summarise the whole caption, a second global route). At inference the "
        "pipeline passes the real states; check the model both ways (benchmarks/mmdit_conditioning.py)",
    )
    p.add_argument(
        "--mix",
        default=None,
        help="probabilities of 1, 2 and 3 objects per training scene, e.g. 0.25,0.55,0.20 "
        f"(default {','.join(map(str, R.TRAINING_MIX))})",
    )
    args = p.parse_args(argv)
    if args.mix is None:
        args.mix = tuple(R.TRAINING_MIX)
    else:
        try:
            args.mix = tuple(float(v) for v in args.mix.split(","))
        except ValueError:
            raise ValueError(f"--mix must be three comma-separated numbers, got {args.mix!r}") from None
        if len(args.mix) != 3 or any(not math.isfinite(v) or v < 0 for v in args.mix) or abs(sum(args.mix) - 1) > 1e-6:
            raise ValueError(f"--mix must be three non-negative probabilities summing to 1, got {args.mix}")
    if args.no_pooled and args.arch != "mmdit":
        raise ValueError("--no-pooled applies to --arch mmdit only")
    if not (math.isfinite(args.deny_summary) and 0.0 <= args.deny_summary <= 1.0):
        raise ValueError(f"--deny-summary must be a probability in [0, 1], got {args.deny_summary}")
    if args.deny_summary > 0 and not args.no_pooled:
        raise ValueError(
            "--deny-summary needs --no-pooled: the pooled CLIP vector is the same summary, by another path"
        )
    if args.init_from is not None:
        if args.arch != "mmdit":
            raise ValueError("--init-from applies to --arch mmdit only")
        if args.resume:
            raise ValueError("--init-from starts a new run; --resume continues OUT/ckpt.pt: give one of them")
        given = [f"--{k.replace('_', '-')}" for k in ("width", "layers", "text_width") if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: the shape comes from the --init-from model; drop them")
        if not (Path(args.init_from) / "transformer" / "config.json").is_file():
            raise ValueError(
                f"--init-from {args.init_from}: not an exported pipeline folder (no transformer/config.json)"
            )
    for k, v in ARCH_DEFAULTS[args.arch].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.arch == "unet" and any(getattr(args, k) is not None for k in ("width", "layers", "text_width")):
        raise ValueError("--width, --layers and --text-width apply to --arch mmdit only")
    if args.arch == "mmdit" and args.vae_steps:
        raise ValueError("--arch mmdit reuses the shipped autoencoder frozen: --vae-steps must be 0")
    if args.steps <= 0 or args.batch_size <= 0 or args.max_minutes <= 0:
        raise ValueError("--steps, --batch-size and --max-minutes must be positive")
    if not 0.0 <= args.cfg_drop < 1.0:
        raise ValueError(f"--cfg-drop must be in [0, 1), got {args.cfg_drop}")
    return args


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup, constant, then cosine decay to 10% over the last 30% of ``--steps``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    start = int(0.7 * args.steps)
    if step < start:
        return args.lr
    frac = min(1.0, (step - start) / max(1, args.steps - start))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def make_batch(
    seed: int, step: int, batch_size: int, cfg_drop: float, mix: tuple[float, ...] = R.TRAINING_MIX
) -> tuple[torch.Tensor, list[str]]:
    """The batch of step ``step``: images in [-1, 1] (B, 3, 32, 32) and captions ("" for dropped ones)."""
    rng = np.random.default_rng([seed, step])
    images, captions = [], []
    for _ in range(batch_size):
        scene = R.sample_training_scene(rng, mix)
        cap = R.caption(scene, rng)
        captions.append("" if rng.random() < cfg_drop else cap)
        images.append(R.to_array(R.render(scene)))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, 32, 32)
    return x, captions


class Tokens:
    """Caches tokenizer ids per caption (the caption set is finite)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        for c in captions:
            if c not in self.cache:
                ids = self.tok(c, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
                self.cache[c] = ids.input_ids[0]
        return torch.stack([self.cache[c] for c in captions])  # (B, 77)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)


@torch.no_grad()
def vae_psnr(vae, n: int = 128) -> float:
    """PSNR (dB, 0-255 scale) of decode(encode(x).mode()) on ``n`` clean renders not drawn in training."""
    x = []
    for i in range(n):
        rng = np.random.default_rng([987654321, i])
        x.append(R.to_array(R.render(R.sample_scene(rng, int(rng.integers(1, 4))))))
    x = torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    mse = ((rec - x) * 127.5).pow(2).mean().item()
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def build_pipeline(unet, text_encoder, vae, tokenizer, scheduler="ddim"):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=M.build_scheduler(scheduler),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def write_samples(pipe, path: Path, seed: int = 0) -> None:
    """A grid of EMA samples of :data:`SAMPLE_PROMPTS` (rows of 8 images), 20 DDIM steps, CFG 4."""
    from PIL import Image

    g = [torch.Generator().manual_seed(seed * 1000 + i) for i in range(len(SAMPLE_PROMPTS))]
    imgs = pipe(SAMPLE_PROMPTS, num_inference_steps=20, guidance_scale=4.0, generator=g).images
    grid = Image.new("RGB", (8 * 32, (len(imgs) // 8) * 32))
    for i, im in enumerate(imgs):
        grid.paste(im, ((i % 8) * 32, (i // 8) * 32))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    grid.resize((grid.width * 4, grid.height * 4), Image.NEAREST).save(tmp)
    os.replace(tmp, path)
    prompts = path.parent / "prompts.txt"
    if not prompts.exists():
        prompts.write_text("left to right, top to bottom:\n" + "\n".join(SAMPLE_PROMPTS) + "\n")


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[3]
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:  # noqa: BLE001 - not a checkout
        return "unknown"


def _atomic_export(out: Path, pipe, info: dict, text_encoders: tuple[str, ...]) -> None:
    """Saves ``pipe`` (float16 weights) as the diffusers folder OUT/pipeline with ``TRAINING.json``, atomically."""
    tmp, final, old = out / "pipeline.tmp", out / "pipeline", out / "pipeline.old"
    for d in (tmp, old):
        if d.exists():
            shutil.rmtree(d)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    # Weights are stored in float16 but the text encoder's config must say float32: transformers loads with
    # the config's dtype by default while diffusers loads float32, and mixed dtypes break the plain
    # `StableDiffusionPipeline.from_pretrained(folder)`.
    for name in text_encoders:
        te_cfg_path = tmp / name / "config.json"
        te_cfg = json.loads(te_cfg_path.read_text())
        te_cfg["dtype"] = "float32"
        te_cfg_path.write_text(json.dumps(te_cfg, indent=2, sort_keys=True) + "\n")
    (tmp / "TRAINING.json").write_text(json.dumps(info, indent=2) + "\n")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def export(out: Path, ema_unet, ema_te, vae, tokenizer, info: dict) -> None:
    """Writes the EMA model as a float16 diffusers folder OUT/pipeline, atomically (temp folder, then rename)."""
    pipe = build_pipeline(
        copy.deepcopy(ema_unet).half().to(memory_format=torch.contiguous_format),
        copy.deepcopy(ema_te).half(),
        copy.deepcopy(vae).half(),
        tokenizer,
    )
    _atomic_export(out, pipe, info, ("text_encoder",))


def build_sd3_pipeline(transformer, text_encoder, text_encoder_2, vae, tokenizer):
    """A ``StableDiffusion3Pipeline`` without T5; both CLIP encoders read the same (shipped) tokenizer."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=M.build_flow_scheduler(), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer, text_encoder_3=None,
        tokenizer_3=None,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export_sd3(out: Path, ema_transformer, ema_te, ema_te2, vae, tokenizer, info: dict) -> None:
    """Writes the EMA MM-DiT model as a float16 ``StableDiffusion3Pipeline`` folder OUT/pipeline, atomically."""
    pipe = build_sd3_pipeline(
        copy.deepcopy(ema_transformer).half(),
        copy.deepcopy(ema_te).half(),
        copy.deepcopy(ema_te2).half(),
        copy.deepcopy(vae).half(),
        tokenizer,
    )
    _atomic_export(out, pipe, info, ("text_encoder", "text_encoder_2"))


class UNetArch:
    """The shipped SD 1.x layout: UNet + CLIPTextModel, v-prediction on the cosine schedule; trains the VAE."""

    def __init__(self, args: argparse.Namespace, tokenizer):
        self.tokenizer = tokenizer
        te, unet, vae = M.build_text_encoder(), M.build_unet(), M.build_vae()
        unet = unet.to(memory_format=torch.channels_last)  # faster convolutions on the CPU
        self.models = {"unet": unet, "text_encoder": te}
        self.emas = {k: copy.deepcopy(m).requires_grad_(False) for k, m in self.models.items()}
        self.vae = vae
        self.vae_opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
        self.alphas = M.build_scheduler().alphas_cumprod.float()  # (1000,)

    def loss(self, x0: torch.Tensor, ids: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        t = torch.randint(0, len(self.alphas), (x0.shape[0],), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = self.alphas[t].view(-1, 1, 1, 1)
        x0 = x0.contiguous(memory_format=torch.channels_last)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise  # (B, 3, 32, 32)
        v = a.sqrt() * noise - (1 - a).sqrt() * x0  # v-prediction target
        cond = self.models["text_encoder"](ids).last_hidden_state  # (B, 77, 128)
        pred = self.models["unet"](xt, t, cond).sample
        return F.mse_loss(pred, v)

    def pipeline(self):
        return build_pipeline(self.emas["unet"], self.emas["text_encoder"], self.vae, self.tokenizer)

    def export(self, out: Path, info: dict) -> None:
        export(out, self.emas["unet"], self.emas["text_encoder"], self.vae, self.tokenizer, info)

    def extra_info(self) -> dict:
        return {}


def cut_pooled_path(transformer) -> None:
    """Hold the first weight of the pooled-vector projection at zero (frozen): ``time_text_embed`` then adds a
    constant, whatever pooled vector the pipeline passes, and the caption can reach the image only through the word
    tokens of joint attention."""
    weight = transformer.time_text_embed.text_embedder.linear_1.weight
    with torch.no_grad():
        weight.zero_()
    weight.requires_grad_(False)


def deny_summary(
    ctx: torch.Tensor, empty: torch.Tensor, ids: torch.Tensor, eos: int, rows: torch.Tensor
) -> torch.Tensor:
    """``ctx`` (B, L, D) with, in the rows where ``rows`` is true, every position from the first ``eos`` token of
    ``ids`` (B, 77) on taken from ``empty`` (1, L, D); the zero "T5" positions after the 77 CLIP ones are the same in
    both. Word positions (before the end token) are untouched."""
    pos = torch.arange(ids.shape[1])
    first_eos = torch.where(ids == eos, pos, ids.shape[1]).min(dim=1).values  # (B,)
    after = (pos[None, :] >= first_eos[:, None]) & rows[:, None]  # (B, 77)
    after = torch.cat([after, after.new_zeros(ids.shape[0], ctx.shape[1] - ids.shape[1])], dim=1)
    return torch.where(after[..., None], empty.expand_as(ctx), ctx)


class MMDiTArch:
    """SD3 without T5: ``SD3Transformer2DModel`` + two CLIPTextModelWithProjection, rectified flow; frozen VAE."""

    def __init__(self, args: argparse.Namespace, tokenizer):
        self.tokenizer = tokenizer
        if args.init_from is not None:  # warm start: the exported (EMA) weights, in float32
            from diffusers import SD3Transformer2DModel
            from transformers import CLIPTextModelWithProjection

            src = Path(args.init_from)
            transformer = SD3Transformer2DModel.from_pretrained(src / "transformer", torch_dtype=torch.float32)
            te = CLIPTextModelWithProjection.from_pretrained(src / "text_encoder", torch_dtype=torch.float32)
            te2 = CLIPTextModelWithProjection.from_pretrained(src / "text_encoder_2", torch_dtype=torch.float32)
            transformer.train(), te.train(), te2.train()
            args.width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
            args.layers = transformer.config.num_layers
            args.text_width = te.config.hidden_size
        else:
            te, te2 = M.build_sd3_text_encoders(width=args.text_width)
            transformer = M.build_mmdit(width=args.width, layers=args.layers, text_width=args.text_width)
        if args.no_pooled:
            cut_pooled_path(transformer)
        self.models = {"transformer": transformer, "text_encoder": te, "text_encoder_2": te2}
        self.emas = {k: copy.deepcopy(m).requires_grad_(False) for k, m in self.models.items()}
        # Training runs the 256 zero "T5" tokens of the pipeline as one token (exactly equivalent, much faster);
        # the EMA copies, which are sampled and exported, keep diffusers' processor.
        transformer.set_attn_processor(M.PadTokenJointAttnProcessor(M.T5_PAD_TOKENS))
        self.vae = M.load_shipped_vae().requires_grad_(False)
        self.vae_opt = None
        self.deny_p = float(args.deny_summary)
        self.empty_ids = None
        if self.deny_p > 0:
            self.empty_ids = Tokens(tokenizer)([""])  # (1, 77), tokenized as the training captions are
            self.eos = tokenizer.eos_token_id

    def condition(self, ids: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The joint-attention context and pooled vector of ``ids``; with ``--deny-summary P`` a fraction P of the rows
        get the empty caption's states from their end token on (drawn from ``g``, so a step is reproducible)."""
        te, te2 = self.models["text_encoder"], self.models["text_encoder_2"]
        if self.empty_ids is None:
            return M.sd3_condition(te, te2, ids, n_pad=1)
        ctx, pooled = M.sd3_condition(te, te2, torch.cat([ids, self.empty_ids]), n_pad=1)
        ctx, empty = ctx[:-1], ctx[-1:]
        rows = torch.rand(ids.shape[0], generator=g) < self.deny_p
        return deny_summary(ctx, empty, ids, self.eos, rows), pooled[:-1]

    def loss(self, x0: torch.Tensor, ids: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=g))  # SD3's logit-normal(0, 1) timesteps
        noise = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise  # latents are the pixels (scaling 1, shift 0)
        ctx, pooled = self.condition(ids, g)
        pred = self.models["transformer"](xt, ctx, pooled, sigma * 1000).sample
        return F.mse_loss(pred, noise - x0)  # rectified-flow velocity

    def pipeline(self):
        e = self.emas
        return build_sd3_pipeline(e["transformer"], e["text_encoder"], e["text_encoder_2"], self.vae, self.tokenizer)

    def export(self, out: Path, info: dict) -> None:
        e = self.emas
        export_sd3(out, e["transformer"], e["text_encoder"], e["text_encoder_2"], self.vae, self.tokenizer, info)

    def extra_info(self) -> dict:
        count = {k: sum(p.numel() for p in m.parameters()) for k, m in self.models.items()}
        count["vae"] = sum(p.numel() for p in self.vae.parameters())
        return {
            "arch": "mmdit", "pipeline": "StableDiffusion3Pipeline (text_encoder_3=None, tokenizer_3=None)",
            "objective": "rectified flow (velocity noise - x0), logit-normal(0, 1) timesteps",
            "vae": "shipped ShapesWorld autoencoder (pretrained/vae), frozen, shift_factor 0.0",
            "parameters": count,
            "transformer_config": {k: v for k, v in self.models["transformer"].config.items() if not k.startswith("_")},
        }  # fmt: skip


ARCHES = {"unet": UNetArch, "mmdit": MMDiTArch}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = args.threads if args.threads > 0 else 2
    torch.set_num_threads(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    tokenizer = M.clip_tokenizer()
    arch = ARCHES[args.arch](args, tokenizer)
    vae, vae_opt = arch.vae, arch.vae_opt
    params = [p for m in arch.models.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    step, history = 0, {"vae_psnr": None, "runs": []}
    ckpt_path = out / "ckpt.pt"
    if args.resume:
        if not ckpt_path.exists():
            raise ValueError(f"--resume given but {ckpt_path} does not exist; drop --resume to start fresh")
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # tensors and plain values only
        ck_arch = ck.get("args", {}).get("arch", "unet")
        if ck_arch != args.arch:
            raise ValueError(f"{ckpt_path} is a --arch {ck_arch} checkpoint; resume it with --arch {ck_arch}")
        if bool(ck.get("args", {}).get("no_pooled", False)) != args.no_pooled:
            flag = "with" if ck["args"].get("no_pooled") else "without"
            raise ValueError(f"{ckpt_path} was trained {flag} --no-pooled; resume it the same way")
        if float(ck.get("args", {}).get("deny_summary", 0.0)) != args.deny_summary:
            was = ck["args"].get("deny_summary", 0.0)
            raise ValueError(f"{ckpt_path} was trained with --deny-summary {was}; resume it the same way")
        for k, m in arch.models.items():
            m.load_state_dict(ck[k])
            arch.emas[k].load_state_dict(ck[f"ema_{k}"])
        vae.load_state_dict(ck["vae"])
        opt.load_state_dict(ck["opt"])
        if vae_opt is not None:
            vae_opt.load_state_dict(ck["vae_opt"])
        torch.set_rng_state(ck["torch_rng"])
        step, history = ck["step"], ck["history"]
        print(f"resumed from {ckpt_path} at step {step}", flush=True)
    if args.init_from is not None:
        src_info = Path(args.init_from) / "TRAINING.json"
        history["init_from"] = {
            "folder": str(args.init_from),
            "training": json.loads(src_info.read_text()) if src_info.is_file() else None,
        }
    if args.arch != "unet" and history["vae_psnr"] is None:  # the autoencoder is frozen from the start
        history["vae_psnr"] = vae_psnr(vae)
    command = " ".join([Path(sys.executable).name, "-m", "ait2i.shapes.train", *sys.argv[1:]])
    history["runs"].append({"start_step": step, "command": command, "commit": git_commit(), "time": time.time()})

    tokens = Tokens(tokenizer)
    t0 = time.time()
    last_ckpt = last_sample = t0
    deadline = t0 + 60 * args.max_minutes
    bar = tqdm(total=args.steps, initial=step, mininterval=20, desc="train", file=sys.stdout)
    images_seen, loss_acc, n_acc = 0, 0.0, 0
    step_time: dict[int, float] = {}  # adaptive threads: running mean seconds per step for 1 and 2 threads
    best_threads = threads

    def info() -> dict:
        return {
            "seed": args.seed, "steps": step, "batch_size": args.batch_size, "images_seen": step * args.batch_size,
            "commit": history["runs"][0]["commit"], "runs": history["runs"], "vae_psnr_db": history["vae_psnr"],
            "command": history["runs"][0]["command"], "ema_decay": args.ema, "lr": args.lr, "planned_steps": args.steps,
            "throughput_images_per_s": images_seen / max(1e-9, time.time() - t0), "mix": list(args.mix),
            "no_pooled": bool(getattr(args, "no_pooled", False)),
            "deny_summary": float(getattr(args, "deny_summary", 0.0)),
            "init_from": history.get("init_from"), **arch.extra_info(),
        }  # fmt: skip

    def checkpoint() -> None:
        state = {
            **{k: m.state_dict() for k, m in arch.models.items()},
            **{f"ema_{k}": m.state_dict() for k, m in arch.emas.items()},
            "vae": vae.state_dict(), "opt": opt.state_dict(), "step": step, "history": history,
            "torch_rng": torch.get_rng_state(), "args": vars(args),
        }  # fmt: skip
        if vae_opt is not None:
            state["vae_opt"] = vae_opt.state_dict()
        torch.save(state, out / "ckpt.tmp")
        os.replace(out / "ckpt.tmp", ckpt_path)
        arch.export(out, info())
        print(f"\n[step {step}] checkpoint + export to {out / 'pipeline'}", flush=True)

    while step < args.steps and time.time() < deadline:
        t_step = time.time()
        if args.threads == 0 and step % 200 == 0:  # probe the other thread count for 20 steps
            threads = 3 - best_threads
            torch.set_num_threads(threads)
        elif args.threads == 0 and step % 200 == 20:  # back to the faster of the two
            if len(step_time) == 2:
                best_threads = min(step_time, key=step_time.get)
            threads = best_threads
            torch.set_num_threads(threads)
        x0, caps = make_batch(args.seed, step, args.batch_size, args.cfg_drop, args.mix)
        ids = tokens(caps)
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, args)
        loss = arch.loss(x0, ids, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        for k, m in arch.models.items():
            ema_update(arch.emas[k], m, decay)

        rec = {}
        if step < args.vae_steps:  # autoencoder: pixels are the latents
            xv = x0.contiguous(memory_format=torch.channels_last)[:16]
            sigma = torch.rand(xv.shape[0], 1, 1, 1, generator=g) * 0.1
            enc = vae.encode(xv).latent_dist
            dec = vae.decode(xv + sigma * torch.randn(xv.shape, generator=g)).sample
            vloss = F.mse_loss(enc.mean, xv) + F.mse_loss(dec, xv) + 1e-3 * (enc.logvar + 10).pow(2).mean()
            vae_opt.zero_grad(set_to_none=True)
            vloss.backward()
            vae_opt.step()
            rec["vae_loss"] = vloss.item()
            if step + 1 == args.vae_steps:
                vae.requires_grad_(False)
                history["vae_psnr"] = vae_psnr(vae)
                print(f"\n[step {step + 1}] autoencoder frozen, PSNR {history['vae_psnr']:.2f} dB", flush=True)

        dt = time.time() - t_step
        step_time[threads] = dt if threads not in step_time else 0.9 * step_time[threads] + 0.1 * dt
        step += 1
        images_seen += x0.shape[0]
        loss_acc, n_acc = loss_acc + loss.item(), n_acc + 1
        bar.update(1)
        if step % 50 == 0:
            rec.update(
                threads=threads,
                step=step,
                loss=loss_acc / n_acc,
                lr=lr_at(step - 1, args),
                img_s=images_seen / (time.time() - t0),
            )
            with open(out / "metrics.jsonl", "a") as log:
                log.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{loss_acc / n_acc:.4f}", img_s=f"{rec['img_s']:.1f}")
            loss_acc, n_acc = 0.0, 0
        now = time.time()
        if now - last_sample > 60 * args.sample_minutes:
            write_samples(arch.pipeline(), out / "samples" / f"step{step:06d}.png")
            last_sample = time.time()
        if now - last_ckpt > 60 * args.ckpt_minutes:
            checkpoint()
            last_ckpt = time.time()
    bar.close()
    if history["vae_psnr"] is None:
        history["vae_psnr"] = vae_psnr(vae)
    write_samples(arch.pipeline(), out / "samples" / f"step{step:06d}.png")
    checkpoint()
    print(f"done: {step} steps, {images_seen / (time.time() - t0):.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
