"""Trains the ShapesWorld model on the CPU and exports it as a diffusers folder.

    python -m ait2i.shapes.train --out train-runs/shapes-v1 --seed 0 --max-minutes 85 [--resume]

Every step draws a fresh batch from the renderer's training mix (deterministically from ``(seed, step)``, so a
resumed run sees the same data as an uninterrupted one), drops ~10% of the captions to "" for classifier-free
guidance, and trains the UNet and the text encoder jointly on the v-prediction objective (cosine schedule).
The autoencoder is trained on the side during the first ``--vae-steps`` steps to be a near-identity map on pixels
(encoder: image -> image; decoder: slightly noisy image -> clean image), then frozen; its reconstruction PSNR is
recorded. An EMA of the UNet and text encoder is what gets exported.

Outputs in ``--out``: ``ckpt.pt`` (models, EMA, optimizer, step; written atomically), ``samples/`` (EMA sample
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="run folder (checkpoint, samples, exported pipeline)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=85.0, help="wall-clock budget of this invocation")
    p.add_argument("--steps", type=int, default=3000, help="planned steps; the LR schedule decays towards it")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=7e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay (ramped up from 0 early in training)")
    p.add_argument("--cfg-drop", type=float, default=0.1, help="probability of an empty caption")
    p.add_argument("--vae-steps", type=int, default=800, help="steps during which the autoencoder trains")
    p.add_argument("--ckpt-minutes", type=float, default=10.0)
    p.add_argument("--sample-minutes", type=float, default=15.0)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads; 0 = adaptive: every 200 steps, time 20 steps on 1 and on 2 threads, keep the faster",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    args = p.parse_args(argv)
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


def make_batch(seed: int, step: int, batch_size: int, cfg_drop: float) -> tuple[torch.Tensor, list[str]]:
    """The batch of step ``step``: images in [-1, 1] (B, 3, 32, 32) and captions ("" for dropped ones)."""
    rng = np.random.default_rng([seed, step])
    images, captions = [], []
    for _ in range(batch_size):
        scene = R.sample_training_scene(rng)
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


def export(out: Path, ema_unet, ema_te, vae, tokenizer, info: dict) -> None:
    """Writes the EMA model as a float16 diffusers folder OUT/pipeline, atomically (temp folder, then rename)."""
    tmp, final, old = out / "pipeline.tmp", out / "pipeline", out / "pipeline.old"
    for d in (tmp, old):
        if d.exists():
            shutil.rmtree(d)
    pipe = build_pipeline(
        copy.deepcopy(ema_unet).half().to(memory_format=torch.contiguous_format),
        copy.deepcopy(ema_te).half(),
        copy.deepcopy(vae).half(),
        tokenizer,
    )
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    # Weights are stored in float16 but the text encoder's config must say float32: transformers loads with
    # the config's dtype by default while diffusers loads float32, and mixed dtypes break the plain
    # `StableDiffusionPipeline.from_pretrained(folder)`.
    te_cfg_path = tmp / "text_encoder" / "config.json"
    te_cfg = json.loads(te_cfg_path.read_text())
    te_cfg["dtype"] = "float32"
    te_cfg_path.write_text(json.dumps(te_cfg, indent=2, sort_keys=True) + "\n")
    (tmp / "TRAINING.json").write_text(json.dumps(info, indent=2) + "\n")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = args.threads if args.threads > 0 else 2
    torch.set_num_threads(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from ait2i.testing import clip_tokenizer

    torch.manual_seed(args.seed)
    tokenizer = clip_tokenizer()
    te, unet, vae = M.build_text_encoder(), M.build_unet(), M.build_vae()
    unet = unet.to(memory_format=torch.channels_last)  # faster convolutions on the CPU
    ema_te, ema_unet = copy.deepcopy(te).requires_grad_(False), copy.deepcopy(unet).requires_grad_(False)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    vae_opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    step, history = 0, {"vae_psnr": None, "runs": []}
    ckpt_path = out / "ckpt.pt"
    if args.resume:
        if not ckpt_path.exists():
            raise ValueError(f"--resume given but {ckpt_path} does not exist; drop --resume to start fresh")
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        (
            unet.load_state_dict(ck["unet"]),
            te.load_state_dict(ck["text_encoder"]),
            vae.load_state_dict(ck["vae"]),
        )
        ema_unet.load_state_dict(ck["ema_unet"]), ema_te.load_state_dict(ck["ema_text_encoder"])
        opt.load_state_dict(ck["opt"]), vae_opt.load_state_dict(ck["vae_opt"])
        torch.set_rng_state(ck["torch_rng"])
        step, history = ck["step"], ck["history"]
        print(f"resumed from {ckpt_path} at step {step}", flush=True)
    command = " ".join([Path(sys.executable).name, "-m", "ait2i.shapes.train", *sys.argv[1:]])
    history["runs"].append({"start_step": step, "command": command, "commit": git_commit(), "time": time.time()})

    alphas = M.build_scheduler().alphas_cumprod.float()  # (1000,)
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
            "throughput_images_per_s": images_seen / max(1e-9, time.time() - t0),
        }  # fmt: skip

    def checkpoint() -> None:
        state = {
            "unet": unet.state_dict(), "text_encoder": te.state_dict(), "vae": vae.state_dict(),
            "ema_unet": ema_unet.state_dict(), "ema_text_encoder": ema_te.state_dict(), "opt": opt.state_dict(),
            "vae_opt": vae_opt.state_dict(), "step": step, "history": history, "torch_rng": torch.get_rng_state(),
            "args": vars(args),
        }  # fmt: skip
        torch.save(state, out / "ckpt.tmp")
        os.replace(out / "ckpt.tmp", ckpt_path)
        export(out, ema_unet, ema_te, vae, tokenizer, info())
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
        x0, caps = make_batch(args.seed, step, args.batch_size, args.cfg_drop)
        ids = tokens(caps)
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        t = torch.randint(0, len(alphas), (x0.shape[0],), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        x0 = x0.contiguous(memory_format=torch.channels_last)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise  # (B, 3, 32, 32)
        v = a.sqrt() * noise - (1 - a).sqrt() * x0  # v-prediction target
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, args)
        cond = te(ids).last_hidden_state  # (B, 77, 128)
        pred = unet(xt, t, cond).sample
        loss = F.mse_loss(pred, v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_te, te, decay)

        rec = {}
        if step < args.vae_steps:  # autoencoder: pixels are the latents
            xv = x0[:16]
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
            write_samples(build_pipeline(ema_unet, ema_te, vae, tokenizer), out / "samples" / f"step{step:06d}.png")
            last_sample = time.time()
        if now - last_ckpt > 60 * args.ckpt_minutes:
            checkpoint()
            last_ckpt = time.time()
    bar.close()
    if history["vae_psnr"] is None:
        history["vae_psnr"] = vae_psnr(vae)
    write_samples(build_pipeline(ema_unet, ema_te, vae, tokenizer), out / "samples" / f"step{step:06d}.png")
    checkpoint()
    print(f"done: {step} steps, {images_seen / (time.time() - t0):.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
