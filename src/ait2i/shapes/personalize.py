"""Teaching ShapesWorld new shapes: the star and the ring, by textual inversion or LoRA.

    python -m ait2i.shapes.personalize train --kind lora --concept star --out train-runs/star-lora [--resume]
    python -m ait2i.shapes.personalize train --kind lora --concept ring --out train-runs/ring-lora [--resume]
    python -m ait2i.shapes.personalize train --kind ti   --concept star --out train-runs/star-ti   [--resume]

The renderer (:mod:`ait2i.shapes.render`) can draw a five-pointed star and a ring (an annulus) that are outside
the training mix; the checker (:mod:`ait2i.shapes.check`) tells both from the known shapes. The data of a concept
are :data:`NUM_RENDERS` fixed renders (:func:`concept_scenes`): the shape in each of the six colours at various
positions and sizes, half of them alone and half next to one ordinary shape of another colour (so that the concept
composes: "a red star and a blue square").

- **textual inversion** (``--kind ti``): a new placeholder ``<star>`` (``<ring>``) of :data:`TI_VECTORS` vectors is
  added to the CLIP tokenizer and text encoder (prompts spell it ``<star>``; the pipeline expands it to
  ``<star> <star>_1`` as diffusers does), initialised from the mean embedding of "circle", "square" and
  "triangle"; only its rows of the token-embedding matrix train (every other weight is frozen, the other rows are
  restored after each step). Saved as ``learned_embeds.safetensors`` (``{"<star>": (TI_VECTORS, 128)}``,
  diffusers' own ``textual_inversion.py`` format), loaded by ``pipe.load_textual_inversion(path, token="<star>")``.
- **LoRA** (``--kind lora``): a LoRA (peft) of rank ``--rank`` on the UNet modules of :data:`LORA_TARGET_SETS`
  (``--targets``: ``attn``, the attention projections and feed-forward layers, or ``attn-conv``, those and every
  ResNet convolution and the transformers' ``proj_in``/``proj_out``) and, with ``--text-encoder``, on the CLIP
  text encoder's attention and MLP layers (:data:`TEXT_LORA_TARGETS`); defaults in :data:`KIND_DEFAULTS`. The trigger
  is the concept's plain name, **"star"** or **"ring"**: each one CLIP token (``star</w>``, ``ring</w>``) that no
  training caption holds (its embedding is still the random initialisation), so a rare word to this model, and
  prompts stay natural ("a red star and a blue ring"); the checker's shape names are the same words.
  DreamBooth-style prior preservation: every batch is half concept renders, half images the *base model*
  generated from ordinary training-mix captions (:func:`prior_images`), so the LoRA keeps what the model already
  drew. Saved with ``StableDiffusionPipeline.save_lora_weights`` as ``pytorch_lora_weights.safetensors`` (peft
  keys), loaded by ``pipe.load_lora_weights(path, adapter_name=...)``; two concepts combine with
  ``pipe.set_adapters([...])``.

Both objectives are the shipped model's (v-prediction, cosine schedule, uniform timesteps; see
:mod:`ait2i.shapes.train`). Every step's batch and noise come from ``(seed, step)``, so a resumed run (``--resume``,
from ``OUT/ckpt.pt``, written every ``--ckpt-minutes``) sees the same data as an uninterrupted one.

What a concept is, the shipped ones and loading them (:func:`~ait2i.shapes.concept.load_concept`, safetensors
only) are in :mod:`ait2i.shapes.concept`; the evaluation of docs/results/personalization.md is the
``personalization`` suite of the benchmark runner (``ait2i bench personalization``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ait2i.shapes import render as R
from ait2i.shapes.concept import (
    CONCEPT_SHAPES,
    LORA_FILE,
    PLACEHOLDER,
    TI_FILE,
    TI_VECTORS,
    check_shape,
    placeholder,
    require_peft,
)

TI_INIT_WORDS = ("circle", "square", "triangle")
LORA_RANK = 8
#: LoRA target sets (peft ``target_modules``, matched as module-name suffixes in the UNet).
LORA_TARGET_SETS: dict[str, tuple[str, ...]] = {
    # attention projections (self and cross) and feed-forward: the first shipped star LoRA
    "attn": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"),
    # ... and every ResNet convolution (3x3 conv1/conv2, 1x1 conv_shortcut) and the transformers' 1x1
    # proj_in/proj_out: at 32x32 the convolutions are what draws a shape's outline
    "attn-conv": (
        "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2",
        "conv1", "conv2", "conv_shortcut", "proj_in", "proj_out",
    ),
}  # fmt: skip
LORA_TARGETS = LORA_TARGET_SETS["attn"]
#: Text-encoder LoRA targets (``--text-encoder``): the CLIP layers' attention projections and MLP.
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
NUM_RENDERS = 48

KIND_DEFAULTS = {
    "ti": {"steps": 800, "lr": 5e-3, "batch_size": 16},
    # measured on quick trials (4 prompts x 8 seeds): attention-only rank 8 (the first shipped star) drew a star in
    # 3-5% of images; + convolutions, rank 16, lr 2e-3, 1200 steps: 14/16 one-object, 0/16 two-object; + a
    # text-encoder LoRA: two-object prompts too (docs/results/personalization.md)
    "lora": {"steps": 1200, "lr": 2e-3, "batch_size": 16, "rank": 16, "targets": "attn-conv", "text_encoder": True},
}


# -- data --------------------------------------------------------------------------------------------------------


def _alone(i: int, alone_every: int) -> bool:
    if alone_every == 2:  # the first concepts' data: the even renders alone
        return i % 2 == 0
    return (i + i // len(R.COLORS)) % alone_every == 0  # shifted every colour cycle, so each colour is alone


def concept_scenes(seed: int = 0, n: int = NUM_RENDERS, shape: str = "star", alone_every: int = 2) -> list[R.Scene]:
    """The ``n`` concept renders of ``shape`` (``"star"`` or ``"ring"``): concept ``i`` is in colour ``i % 6``;
    one render in ``alone_every`` shows it alone (with 2: the even ``i``), the others next to one ordinary shape
    (circle, square or triangle in turn) of another colour. Deterministic in ``seed``."""
    check_shape(shape)
    if n < 1 or alone_every < 1:
        raise ValueError(f"need n >= 1 and alone_every >= 1, got n={n}, alone_every={alone_every}")
    colors = list(R.COLORS)
    out = []
    pairs = 0
    for i in range(n):
        rng = np.random.default_rng([seed, 7, i])
        c = colors[i % len(colors)]
        if _alone(i, alone_every):
            out.append(R.sample_scene(rng, 1, colors=[c], shapes=[shape]))
        else:
            other = str(rng.choice([x for x in colors if x != c]))
            plain = R.SHAPES[pairs % len(R.SHAPES)]
            pairs += 1
            objs = [(shape, c), (plain, other)]
            if rng.random() < 0.5:
                objs.reverse()
            out.append(R.sample_scene(rng, 2, colors=[o[1] for o in objs], shapes=[o[0] for o in objs]))
    return out


def concept_caption(scene: R.Scene, word: str, rng: np.random.Generator, shape: str = "star") -> str:
    """The scene's caption with the concept ``shape`` named ``word`` (``"<star>"`` or ``"star"``), objects in
    random order."""
    phrases = [f"{o.color} {word if o.shape == shape else o.shape}" for o in scene.objects]
    order = rng.permutation(len(phrases))
    return R.caption_of([phrases[i] for i in order])


def _to_tensor(images) -> torch.Tensor:
    x = np.stack([R.to_array(im) for im in images])
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, 32, 32)


@torch.no_grad()
def prior_images(pipe, seed: int = 0, n: int = NUM_RENDERS, steps: int = 20) -> tuple[torch.Tensor, list[str]]:
    """``n`` images the base model draws from training-mix captions (20 DDIM steps, CFG 7.5): the prior-preservation
    set of the LoRA. Returns images in [-1, 1] (n, 3, 32, 32) and their captions."""
    caps = []
    for i in range(n):
        rng = np.random.default_rng([seed, 11, i])
        caps.append(R.caption(R.sample_training_scene(rng), rng))
    imgs = []
    for k in range(0, n, 16):
        gens = [torch.Generator().manual_seed(seed * 100_000 + i) for i in range(k, min(n, k + 16))]
        imgs += pipe(caps[k : k + 16], num_inference_steps=steps, guidance_scale=7.5, generator=gens).images
    return _to_tensor(imgs), caps


# -- training ----------------------------------------------------------------------------------------------------


def add_placeholder(tokenizer, text_encoder, token: str = PLACEHOLDER, vectors: int = TI_VECTORS) -> list[int]:
    """Adds ``token`` (and ``token_1`` ... for more vectors) to the tokenizer and the text encoder, initialised from
    the mean embedding of :data:`TI_INIT_WORDS`. Returns the new token ids."""
    names = [token] + [f"{token}_{k}" for k in range(1, vectors)]
    added = tokenizer.add_tokens(names)
    if added != len(names):
        raise ValueError(f"{token!r} is already in the tokenizer; pick another placeholder")
    ids = tokenizer.convert_tokens_to_ids(names)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = text_encoder.get_input_embeddings().weight
    init_ids = [tokenizer.convert_tokens_to_ids(f"{w}</w>") for w in TI_INIT_WORDS]
    with torch.no_grad():
        emb[ids] = emb[init_ids].mean(0, keepdim=True).expand(len(ids), -1)
    return ids


def expand(caption: str, token: str = PLACEHOLDER, vectors: int = TI_VECTORS) -> str:
    """A caption as the pipeline expands a multi-vector placeholder: ``<star>`` -> ``<star> <star>_1``."""
    return caption.replace(token, " ".join([token] + [f"{token}_{k}" for k in range(1, vectors)]))


def lora_config(rank: int = LORA_RANK, targets: str = "attn"):
    """The peft ``LoraConfig``: rank ``rank`` (alpha = rank), Gaussian init of A, zeros for B, on the UNet modules
    of :data:`LORA_TARGET_SETS` ``[targets]``."""
    require_peft()
    from peft import LoraConfig

    if targets not in LORA_TARGET_SETS:
        raise ValueError(f"unknown LoRA target set {targets!r}; expected one of {sorted(LORA_TARGET_SETS)}")
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    return LoraConfig(
        r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGET_SETS[targets])
    )


def save_ti(text_encoder, ids: list[int], folder: Path, token: str = PLACEHOLDER) -> Path:
    from safetensors.torch import save_file

    vec = text_encoder.get_input_embeddings().weight[ids].detach().to(torch.float32).clone()  # (V, 128)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TI_FILE
    tmp = folder / (TI_FILE + ".tmp")
    save_file({token: vec.contiguous()}, str(tmp))
    os.replace(tmp, path)
    return path


def save_lora(unet, folder: Path, text_encoder=None) -> Path:
    """Saves the UNet's LoRA with ``StableDiffusionPipeline.save_lora_weights`` in peft's key format
    (``unet.<module>.lora_A.weight``), which ``load_lora_weights`` reads as is. Not converted to the old diffusers
    ``lora.down``/``lora.up`` names: diffusers 0.42 converts only the linear layers' keys, and a file mixing both
    formats loads without the linear LoRAs (a test checks that the loaded pipeline draws what training drew)."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    def plain(model):
        return {k: v.detach().to(torch.float32).contiguous() for k, v in get_peft_model_state_dict(model).items()}

    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        str(folder), unet_lora_layers=plain(unet),
        text_encoder_lora_layers=plain(text_encoder) if text_encoder is not None else None, safe_serialization=True,
    )  # fmt: skip
    return folder / LORA_FILE


class Trainer:
    """One personalization run (``kind`` ``"ti"`` or ``"lora"``) on a loaded ShapesWorld pipeline."""

    def __init__(
        self,
        pipe,
        kind: str,
        seed: int = 0,
        lr: float | None = None,
        batch_size: int | None = None,
        prior_n: int = NUM_RENDERS,
        prior_steps: int = 20,
        shape: str = "star",
        rank: int | None = None,
        targets: str | None = None,
        renders: int = NUM_RENDERS,
        alone_every: int = 2,
        text_encoder: bool | None = None,
    ):
        from ait2i.shapes import model as M

        if kind not in KIND_DEFAULTS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KIND_DEFAULTS)}")
        check_shape(shape)
        d = KIND_DEFAULTS[kind]
        self.kind, self.seed, self.shape = kind, seed, shape
        self.lr = d["lr"] if lr is None else lr
        self.batch_size = d["batch_size"] if batch_size is None else batch_size
        self.rank = d.get("rank", LORA_RANK) if rank is None else rank
        self.targets = d.get("targets", "attn") if targets is None else targets
        self.text_lora = bool(d.get("text_encoder", False) if text_encoder is None else text_encoder)
        self.token = placeholder(shape)
        self.pipe = pipe
        self.tok, self.te, self.unet = pipe.tokenizer, pipe.text_encoder, pipe.unet
        self.te.requires_grad_(False)
        self.unet.requires_grad_(False)
        pipe.vae.requires_grad_(False)
        self.alphas = M.build_scheduler().alphas_cumprod.float()
        self.scenes = concept_scenes(seed, n=renders, shape=shape, alone_every=alone_every)
        self.images = _to_tensor([R.render(s) for s in self.scenes])  # (N, 3, 32, 32)
        torch.manual_seed(seed)
        if kind == "ti":
            self.ids = add_placeholder(self.tok, self.te, self.token)
            emb = self.te.get_input_embeddings().weight
            emb.requires_grad_(True)
            self.frozen = emb.detach().clone()
            self.keep = torch.ones(emb.shape[0], dtype=torch.bool)
            self.keep[self.ids] = False
            self.params = [emb]
            self.prior = None
        else:
            self.prior = prior_images(pipe, seed, n=prior_n, steps=prior_steps)
            self.unet.add_adapter(lora_config(self.rank, self.targets))
            if self.text_lora:  # a LoRA on the text encoder as well (same rank), as diffusers' DreamBooth LoRA does
                from peft import LoraConfig, inject_adapter_in_model

                cfg = LoraConfig(
                    r=self.rank, lora_alpha=self.rank, init_lora_weights="gaussian",
                    target_modules=list(TEXT_LORA_TARGETS),
                )  # fmt: skip
                inject_adapter_in_model(cfg, self.te)  # (transformers' add_adapter wants peft >= 0.22)
            self.params = [p for p in self.unet.parameters() if p.requires_grad]
            self.params += [p for p in self.te.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=self.lr, weight_decay=0.0)
        self.step = 0
        self._cache: dict[str, torch.Tensor] = {}

    def _ids(self, caps: list[str]) -> torch.Tensor:
        for c in caps:
            if c not in self._cache:
                self._cache[c] = self.tok(
                    c, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
                ).input_ids[0]
        return torch.stack([self._cache[c] for c in caps])

    def batch(self, step: int) -> tuple[torch.Tensor, list[str]]:
        """The batch of ``step``: concept renders (random horizontal flips) and, for LoRA, prior images."""
        rng = np.random.default_rng([self.seed, 13, step])
        n_concept = self.batch_size if self.kind == "ti" else self.batch_size // 2
        pick = rng.choice(len(self.scenes), size=n_concept, replace=False)
        x = self.images[pick].clone()
        flip = torch.from_numpy(rng.random(n_concept) < 0.5)
        x[flip] = x[flip].flip(-1)
        word = self.token if self.kind == "ti" else self.shape
        caps = [concept_caption(self.scenes[i], word, rng, self.shape) for i in pick]
        if self.kind == "ti":
            caps = [expand(c, self.token) for c in caps]
        else:
            px, pcaps = self.prior
            ppick = rng.choice(
                len(pcaps), size=self.batch_size - n_concept, replace=len(pcaps) < self.batch_size - n_concept
            )
            x = torch.cat([x, px[ppick]])
            caps = caps + [pcaps[i] for i in ppick]
        return x, caps

    def lr_at(self, step: int, steps: int) -> float:
        warm = max(1, steps // 20)
        if step < warm:
            return self.lr * (step + 1) / warm
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm))))

    def train_step(self, steps: int) -> float:
        x0, caps = self.batch(self.step)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        t = torch.randint(0, len(self.alphas), (x0.shape[0],), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = self.alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        v = a.sqrt() * noise - (1 - a).sqrt() * x0
        cond = self.te(self._ids(caps)).last_hidden_state
        loss = F.mse_loss(self.unet(xt, t, cond).sample, v)
        for pg in self.opt.param_groups:
            pg["lr"] = self.lr_at(self.step, steps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.kind == "ti":
            emb = self.params[0]
            emb.grad[self.keep] = 0
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        if self.kind == "ti":
            with torch.no_grad():
                emb[self.keep] = self.frozen[self.keep]
        self.step += 1
        return loss.item()

    def state(self) -> dict:
        return {"params": [p.detach().clone() for p in self.params], "opt": self.opt.state_dict(), "step": self.step}

    def load_state(self, st: dict) -> None:
        with torch.no_grad():
            for p, q in zip(self.params, st["params"]):
                p.copy_(q)
        self.opt.load_state_dict(st["opt"])
        self.step = st["step"]

    def save(self, folder: Path) -> Path:
        if self.kind == "ti":
            return save_ti(self.te, self.ids, folder, self.token)
        return save_lora(self.unet, folder, self.te if self.text_lora else None)


def _git_commit() -> str:
    from ait2i.shapes.train import git_commit

    return git_commit()


def train(argv_args: argparse.Namespace) -> Path:
    """The ``train`` command: trains, checkpoints (``OUT/ckpt.pt``), writes the concept folder ``OUT/concept``."""
    from tqdm import tqdm

    from ait2i.shapes.model import load_pipeline

    args = argv_args
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps or KIND_DEFAULTS[args.kind]["steps"]
    pipe = load_pipeline()
    t_setup = time.time()
    tr = Trainer(
        pipe, args.kind, seed=args.seed, lr=args.lr, batch_size=args.batch_size, shape=args.concept, rank=args.rank,
        targets=args.targets, renders=args.renders, alone_every=args.alone_every, text_encoder=args.text_encoder,
    )  # fmt: skip
    setup_s = time.time() - t_setup
    ck = out / "ckpt.pt"
    history = {"runs": [], "train_seconds": 0.0}
    if args.resume and ck.exists():
        st = torch.load(ck, map_location="cpu", weights_only=True)
        if st["kind"] != args.kind or st.get("concept", "star") != args.concept:
            raise ValueError(f"{ck} is a --kind {st['kind']} --concept {st.get('concept', 'star')} checkpoint")
        tr.load_state(st["trainer"])
        history = st["history"]
        print(f"resumed from {ck} at step {tr.step}", flush=True)
    elif args.resume:
        raise ValueError(f"--resume given but {ck} does not exist; drop --resume to start fresh")
    command = " ".join(["python", "-m", "ait2i.shapes.personalize", *sys.argv[1:]])
    history["runs"].append({"start_step": tr.step, "command": command, "commit": _git_commit()})

    def checkpoint() -> None:
        st = {"kind": args.kind, "concept": args.concept, "trainer": tr.state(), "history": history}
        torch.save(st, out / "ckpt.tmp")
        os.replace(out / "ckpt.tmp", ck)

    t0 = time.time()
    last = t0
    bar = tqdm(
        total=steps, initial=tr.step, desc=f"personalize {args.concept} {args.kind}", mininterval=10, file=sys.stdout
    )
    losses = []
    while tr.step < steps:
        losses.append(tr.train_step(steps))
        bar.update(1)
        if args.save_every and tr.step % args.save_every == 0 and tr.step < steps:
            tr.save(out / f"concept-step{tr.step}")  # intermediate concepts, to measure the learning curve
        if tr.step % 25 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4f}")
            with open(out / "metrics.jsonl", "a") as log:
                log.write(json.dumps({"step": tr.step, "loss": float(np.mean(losses[-25:]))}) + "\n")
        if time.time() - last > 60 * args.ckpt_minutes:
            history["train_seconds"] += time.time() - last
            last = time.time()
            checkpoint()
    bar.close()
    history["train_seconds"] += time.time() - last
    checkpoint()
    folder = out / "concept"
    path = tr.save(folder)
    info = {
        "kind": args.kind, "concept": args.concept, "seed": args.seed, "steps": steps, "lr": tr.lr,
        "batch_size": tr.batch_size,
        "renders": args.renders, "alone_every": args.alone_every, "train_seconds": round(history["train_seconds"], 1),
        "setup_seconds": round(setup_s, 1), "threads": args.threads, "runs": history["runs"],
        "command": history["runs"][0]["command"], "commit": history["runs"][0]["commit"],
        "file": path.name, "bytes": path.stat().st_size,
    }  # fmt: skip
    if args.kind == "ti":
        info.update(token=tr.token, vectors=TI_VECTORS, init_words=list(TI_INIT_WORDS))
    else:
        info.update(
            trigger_word=args.concept, rank=tr.rank, target_set=tr.targets, targets=list(LORA_TARGET_SETS[tr.targets]),
            text_encoder=tr.text_lora, prior_images=NUM_RENDERS,
        )  # fmt: skip
    (folder / "TRAINING.json.tmp").write_text(json.dumps(info, indent=2) + "\n")
    os.replace(folder / "TRAINING.json.tmp", folder / "TRAINING.json")  # never half-written
    print(f"done: {steps} steps in {history['train_seconds']:.0f} s; concept in {folder}", flush=True)
    return folder


# -- command line ------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="learn a new shape (star, ring) by textual inversion or LoRA")
    t.add_argument("--kind", choices=sorted(KIND_DEFAULTS), required=True)
    t.add_argument("--concept", choices=list(CONCEPT_SHAPES), default="star", help="the shape to learn")
    t.add_argument("--rank", type=int, default=None, help=f"LoRA rank (default {KIND_DEFAULTS['lora']['rank']})")
    t.add_argument(
        "--targets", choices=sorted(LORA_TARGET_SETS), default=None,
        help=f"LoRA target modules (default {KIND_DEFAULTS['lora']['targets']})",
    )  # fmt: skip
    t.add_argument("--out", required=True, help="run folder (ckpt.pt, metrics.jsonl, concept/)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--ckpt-minutes", type=float, default=2.0)
    t.add_argument(
        "--text-encoder", action=argparse.BooleanOptionalAction, default=None,
        help=f"LoRA: train a text-encoder LoRA too (default {KIND_DEFAULTS['lora']['text_encoder']})",
    )  # fmt: skip
    t.add_argument("--renders", type=int, default=NUM_RENDERS, help="number of concept renders")
    t.add_argument(
        "--alone-every",
        type=int,
        default=2,
        help="one render in N shows the concept alone",
    )
    t.add_argument("--save-every", type=int, default=0, help="also write OUT/concept-stepN every N steps")
    t.add_argument("--resume", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """``python -m ait2i.shapes.personalize train ...`` (the evaluation: ``ait2i bench personalization``)."""
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
