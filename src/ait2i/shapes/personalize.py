"""Real personalized concepts on ShapesWorld: the star and the ring, shapes the shipped model never saw.

    python -m ait2i.shapes.personalize train --kind lora --concept star --out train-runs/star-lora [--resume]
    python -m ait2i.shapes.personalize train --kind lora --concept ring --out train-runs/ring-lora [--resume]
    python -m ait2i.shapes.personalize train --kind ti   --concept star --out train-runs/star-ti   [--resume]
    python -m ait2i.shapes.personalize measure --out runs/personalize [--sets star ring star+ring] [--seeds 0-15]
    python -m ait2i.shapes.personalize report  --out runs/personalize [--grid grid.png]

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

:func:`load_concept` loads a shipped or trained concept into a pipeline and refuses anything but safetensors.
The ``measure`` and ``report`` commands are the evaluation of docs/results/personalization.md: each concept alone
(``--sets star ring``) and both LoRAs together (``star+ring``), with no guidance, Attend-and-Excite and AI-T2I.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ait2i.shapes import render as R
from ait2i.subjects import check_placeholders, loaded_placeholders  # noqa: F401 - re-exported for users

#: The shapes a concept can be: the renderer's shapes outside the training mix (the checker reads both).
CONCEPT_SHAPES: tuple[str, ...] = R.EXTRA_SHAPES  # ("star", "ring")
PLACEHOLDER = "<star>"  # textual-inversion placeholder of the star (the ring's would be "<ring>")
LORA_WORD = "star"  # LoRA trigger word of the star (the ring's is "ring"): the concept's own name
TI_VECTORS = 2
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
TI_FILE = "learned_embeds.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"

KIND_DEFAULTS = {
    "ti": {"steps": 800, "lr": 5e-3, "batch_size": 16},
    # measured on quick trials (4 prompts x 8 seeds): attention-only rank 8 (the first shipped star) drew a star in
    # 3-5% of images; + convolutions, rank 16, lr 2e-3, 1200 steps: 14/16 one-object, 0/16 two-object; + a
    # text-encoder LoRA: two-object prompts too (docs/results/personalization.md)
    "lora": {"steps": 1200, "lr": 2e-3, "batch_size": 16, "rank": 16, "targets": "attn-conv", "text_encoder": True},
}


def placeholder(shape: str = "star") -> str:
    """The textual-inversion placeholder of a concept shape: ``"<star>"``, ``"<ring>"``."""
    _check_shape(shape)
    return f"<{shape}>"


def _check_shape(shape: str) -> None:
    if shape not in CONCEPT_SHAPES:
        raise ValueError(f"unknown concept shape {shape!r}; expected one of {list(CONCEPT_SHAPES)}")


def concepts_dir() -> Path:
    """The shipped concepts (package data): ``star-ti/`` and ``star-lora/``."""
    from importlib import resources

    return Path(str(resources.files("ait2i") / "shapes" / "concepts"))


# -- data --------------------------------------------------------------------------------------------------------


def _alone(i: int, alone_every: int) -> bool:
    if alone_every == 2:  # the first concepts' data: the even renders alone
        return i % 2 == 0
    return (i + i // len(R.COLORS)) % alone_every == 0  # shifted every colour cycle, so each colour is alone


def concept_scenes(seed: int = 0, n: int = NUM_RENDERS, shape: str = "star", alone_every: int = 2) -> list[R.Scene]:
    """The ``n`` concept renders of ``shape`` (``"star"`` or ``"ring"``): concept ``i`` is in colour ``i % 6``;
    one render in ``alone_every`` shows it alone (with 2: the even ``i``), the others next to one ordinary shape
    (circle, square or triangle in turn) of another colour. Deterministic in ``seed``."""
    _check_shape(shape)
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
        _check_shape(shape)
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
    (folder / "TRAINING.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"done: {steps} steps in {history['train_seconds']:.0f} s; concept in {folder}", flush=True)
    return folder


# -- loading ---------------------------------------------------------------------------------------------------

KINDS = ("ti", "lora")


def _is_safetensors(path: Path) -> bool:
    """The file starts like a safetensors file: an 8-byte little-endian header length, then a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= path.stat().st_size - 8 and head[8:9] == b"{"


def concept_file(folder_or_file: str | os.PathLike, kind: str) -> Path:
    """The weights file of a concept: the file itself, or in a folder ``learned_embeds.safetensors`` (ti) /
    ``pytorch_lora_weights.safetensors`` (lora), else its only ``*.safetensors`` file.

    Raises:
        ValueError: unknown kind, a missing file, a file that is not safetensors (``.bin``, ``.pt``, ``.ckpt``:
            pickles run code when loaded, so they are refused), or a folder without exactly one candidate.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown concept kind {kind!r}; expected 'ti' (textual inversion) or 'lora'")
    path = Path(folder_or_file)
    what = "textual-inversion embedding" if kind == "ti" else "LoRA"
    if path.is_dir():
        default = path / (TI_FILE if kind == "ti" else LORA_FILE)
        if default.is_file():
            path = default
        else:
            st = sorted(path.glob("*.safetensors"))
            others = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
            if len(st) != 1:
                hint = f"; it holds {others}, which are not safetensors and are refused" if others else ""
                raise ValueError(
                    f"{path} holds {len(st)} .safetensors files {[p.name for p in st]}; a {what} folder needs "
                    f"{default.name} or exactly one .safetensors file{hint}. Pass the file itself to choose."
                )
            path = st[0]
    elif not path.exists():
        raise ValueError(f"{what} {path} does not exist")
    if path.suffix != ".safetensors" or not _is_safetensors(path):
        raise ValueError(
            f"{path} is not a safetensors file; load_concept only loads {what} weights saved as .safetensors "
            "(pickled .bin/.pt/.ckpt files can run code when loaded). Convert it with "
            "safetensors.torch.save_file(torch.load(path, weights_only=True), 'weights.safetensors')."
        )
    return path


def require_peft() -> None:
    """Refuse up front, naming the install, when peft (diffusers' LoRA backend) is missing.

    Raises:
        ValueError: peft cannot be imported.
    """
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ValueError(
            "loading or training a LoRA needs peft (the LoRA backend of diffusers), which is not installed; it is a "
            "dependency of ait2i: reinstall it (`pip install -e .`) or `pip install 'peft>=0.15'`"
        ) from None


def read_concept_file(path: Path, what: str = "concept") -> dict[str, torch.Tensor]:
    """Every tensor of a concept's safetensors file, each checked to be finite.

    Raises:
        ValueError: naming the file, when it is truncated or corrupt, or holds a NaN or infinite value.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is truncated or corrupt ({e}); re-train the {what} or re-download the file") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(
            f"{path}: the {what} is not finite (NaN or inf) in {bad[:5]}{more}; it would turn every image it "
            "touches into NaN. Re-train it (a lower learning rate) or re-download the file."
        )
    return tensors


#: The first tensor of each LoRA layer, in the key formats ``load_lora_weights`` reads (peft, old diffusers, kohya).
_LORA_DOWN_KEY = re.compile(r"\.(lora_A|lora\.down|lora_down|lora_linear_layer\.down)\.weight$")


def _key_prefix(key: str) -> str:
    head = key.split(".", 1)[0]
    return "_".join(head.split("_")[:2]) if head.startswith("lora_") else head  # kohya: lora_unet_..., lora_te_...


def _lora_layers(pipe, adapter: str) -> int:
    """How many of the pipeline's modules hold a LoRA layer of ``adapter`` (peft's ``lora_A`` /
    ``lora_embedding_A`` dicts, keyed by adapter name)."""
    n = 0
    for name in getattr(pipe, "_lora_loadable_modules", ("unet", "text_encoder")):
        comp = getattr(pipe, name, None)
        if isinstance(comp, torch.nn.Module):
            for m in comp.modules():
                held = [getattr(m, a, None) for a in ("lora_A", "lora_embedding_A")]
                n += any(isinstance(d, torch.nn.Module) and adapter in d for d in held)
    return n


def _adapter_loaded(pipe, adapter: str) -> bool:
    return any(adapter in names for names in pipe.get_list_adapters().values())


def _load_lora(pipe, path: Path, tensors: dict[str, torch.Tensor], adapter: str) -> None:
    """``load_lora_weights`` and a check that every LoRA layer of the file went into the pipeline; on a refusal or
    an error the adapter is deleted again, so the pipeline is as it was."""
    if _adapter_loaded(pipe, adapter):
        raise ValueError(
            f"adapter {adapter!r} is already loaded in this pipeline ({pipe.get_list_adapters()}); pass another "
            "adapter_name, or pipe.delete_adapters(name) first"
        )
    expected = list(getattr(pipe, "_lora_loadable_modules", ("unet", "text_encoder")))
    in_file = len({_LORA_DOWN_KEY.sub("", k) for k in tensors if _LORA_DOWN_KEY.search(k)})
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
        n = _lora_layers(pipe, adapter)
        if n == 0 or n < in_file:
            found = sorted({_key_prefix(k) for k in tensors})
            what = "no LoRA layer" if n == 0 else f"only {n} of the {in_file} LoRA layers"
            raise ValueError(
                f"{path}: {what} of this file went into the pipeline: its keys start with {found}, expected "
                f"keys under {expected} (e.g. 'unet.down_blocks.0.attentions.0.proj_in.lora_A.weight'); diffusers "
                "skips the others with a warning. Rename the keys to the pipeline's component names."
            )
    except BaseException:
        if _adapter_loaded(pipe, adapter):
            pipe.delete_adapters(adapter)
        raise


def _load_ti(pipe, path: Path, tensors: dict[str, torch.Tensor], token: str) -> None:
    """``load_textual_inversion`` and a check that the placeholder is in the tokenizer with the file's vectors;
    on a refusal the placeholder is unloaded again."""
    pipe.load_textual_inversion(str(path), token=token)
    vec = next(iter(tensors.values())) if len(tensors) == 1 else None  # (V, D); one file per encoder: not compared
    vectors = 1 if vec is None or vec.ndim == 1 else vec.shape[0]
    names = [token] + [f"{token}_{k}" for k in range(1, vectors)]  # as diffusers names a multi-vector placeholder
    added = pipe.tokenizer.get_added_vocab()
    problem = None
    if any(n not in added for n in names):
        problem = f"the placeholder {token!r} is not in the tokenizer after loading (added tokens: {sorted(added)})"
    elif vec is not None:
        emb = pipe.text_encoder.get_input_embeddings().weight
        got = emb[pipe.tokenizer.convert_tokens_to_ids(names)].detach()
        if not torch.equal(got, vec.reshape(got.shape).to(got.dtype)):
            problem = f"the text encoder's rows of {names} are not the file's vectors after loading"
    if problem:
        pipe.unload_textual_inversion([n for n in names if n in added])
        raise ValueError(f"{path}: {problem}")


def load_concept(
    pipe, folder_or_file: str | os.PathLike, kind: str, token: str | None = None, adapter_name: str | None = None
) -> str:
    """Loads a textual inversion (``kind="ti"``) or a LoRA (``kind="lora"``) into ``pipe``; safetensors only, and
    checked: it returns only when the concept is in the pipeline.

    Args:
        pipe: a diffusers pipeline with ``load_textual_inversion`` / ``load_lora_weights``.
        folder_or_file: a concept folder (e.g. ``concepts_dir() / "star-ti"``, or a training run's ``concept/``)
            or its weights file.
        kind (`str`): ``"ti"`` or ``"lora"``.
        token (`str`, *optional*): the placeholder of a textual inversion; defaults to the folder's
            ``TRAINING.json`` ``token``, else the key stored in the file.
        adapter_name (`str`, *optional*): the diffusers adapter name of a LoRA; defaults to the folder's name
            (``"star-lora"``). Two LoRAs loaded into one pipeline need different names; combine them with
            ``pipe.set_adapters([...])``.

    Returns:
        `str`: the placeholder (``"<star>"``; multi-vector placeholders expand in prompts as diffusers does) or,
        for a LoRA, its trigger word from ``TRAINING.json`` (``"star"``), else the adapter name.

    Raises:
        ValueError: naming the file, when it is not safetensors, truncated or corrupt, holds a NaN or infinite
            value; for a LoRA, when peft is missing, the adapter name is taken, or not every LoRA layer of the file
            went into the pipeline (keys under a prefix the pipeline does not read: the prefixes found and those
            expected are named); for a textual inversion, when the placeholder is not in the tokenizer with the
            file's vectors afterwards. The pipeline is then as it was.
    """
    path = concept_file(folder_or_file, kind)
    if kind == "lora":
        require_peft()
    tensors = read_concept_file(path, "textual-inversion embedding" if kind == "ti" else "LoRA")
    meta_path = path.parent / "TRAINING.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if kind == "ti":
        if token is None:
            token = meta.get("token")
        if token is None:
            keys = list(tensors)
            token = keys[0] if len(keys) == 1 and keys[0] not in ("string_to_param", "emb_params") else None
        if token is None:
            raise ValueError(f"{path}: say which placeholder the embedding is for with token='<...>'")
        _load_ti(pipe, path, tensors, token)
        return token
    adapter = adapter_name or path.parent.name or "concept"
    _load_lora(pipe, path, tensors, adapter)
    return meta.get("trigger_word", adapter)


# -- measurement -----------------------------------------------------------------------------------------------

#: The evaluation prompts of one concept, with ``"star"`` standing for the concept's shape (:func:`measure_prompts`
#: puts in the ring): objects as ``(colour, shape)`` in prompt order.
MEASURE_PROMPTS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("red", "star"),),
    (("cyan", "star"),),
    (("red", "star"), ("blue", "square")),
    (("green", "star"), ("purple", "circle")),
    (("blue", "star"), ("red", "triangle")),
    (("yellow", "star"), ("green", "square")),
    (("blue", "circle"), ("purple", "star")),
    (("cyan", "square"), ("yellow", "star")),
)
#: The multi-concept prompts: the two new shapes together (both LoRAs loaded), each first and second.
MULTI_PROMPTS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("red", "star"), ("blue", "ring")),
    (("green", "ring"), ("yellow", "star")),
    (("cyan", "star"), ("purple", "ring")),
    (("blue", "ring"), ("red", "star")),
)
MULTI = "star+ring"
#: What ``measure`` can measure: each concept alone and the two together.
CONCEPT_SETS = (*CONCEPT_SHAPES, MULTI)
MEASURE_METHODS = ("none", "attend-and-excite", "ait2i")
#: ``kind``: ``ti`` (textual inversion), ``lora``, or ``base`` (the shipped model with the plain word: reference).
MEASURE_KINDS = ("ti", "lora", "base")
#: Per-image metrics (:func:`score_image`); ``concept_star``/``concept_ring``/``bleed`` are None where they do not
#: apply (no such concept in the prompt, one concept only).
METRICS = (
    "concept", "concept_star", "concept_ring", "concept_color", "any_concept", "others_exact", "bleed",
    "exact_binding", "clean_binding", "has_extra",
)  # fmt: skip
METRIC_NAMES = {
    "concept": "concept present (every concept, right colour)",
    "concept_star": "star present (right colour)",
    "concept_ring": "ring present (right colour)",
    "concept_color": "concept colour present (any shape)",
    "any_concept": "any star/ring",
    "others_exact": "other objects exact (1 - neglect/mis-binding)",
    "bleed": "bleed (a concept's shape in the other concept's colour)",
    "exact_binding": "exact binding",
    "clean_binding": "clean binding",
    "has_extra": "extra objects",
}


def measure_prompts(concept_set: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The prompts of a concept set: :data:`MEASURE_PROMPTS` with the star or the ring, or :data:`MULTI_PROMPTS`."""
    if concept_set == MULTI:
        return MULTI_PROMPTS
    _check_shape(concept_set)
    return tuple(tuple((c, concept_set if s == "star" else s) for c, s in objs) for objs in MEASURE_PROMPTS)


def concept_word(shape: str, kind: str) -> str:
    """How a concept is spelled in a prompt: ``"<star>"`` for textual inversion, the plain word otherwise."""
    return placeholder(shape) if kind == "ti" else shape


def measure_prompt(objects, kind_or_word: str = "lora") -> tuple[str, list[str]]:
    """The prompt text and its subjects (``"red <star>"``, ``"blue square"``) for ``objects``: concept shapes are
    spelled for ``kind_or_word`` (a kind, or ``"<star>"`` for the textual-inversion spelling)."""
    if kind_or_word in MEASURE_KINDS:
        spell = {s: concept_word(s, kind_or_word) for s in CONCEPT_SHAPES}
    elif kind_or_word.startswith("<"):
        spell = {s: placeholder(s) for s in CONCEPT_SHAPES}
    else:
        spell = {s: s for s in CONCEPT_SHAPES}
    phrases = [f"{c} {spell.get(s, s)}" for c, s in objects]
    return R.caption_of(phrases), phrases


def score_image(image, objects) -> dict:
    """Per-image metrics, from :func:`ait2i.shapes.check.check`:

    - ``concept``: every concept object (star, ring) of the prompt is there, one-colour, in its requested colour;
    - ``concept_star`` / ``concept_ring``: that one concept is (None when the prompt has no such concept);
    - ``concept_color``: an object of each concept's colour, any shape (the concept words were not neglected);
    - ``any_concept``: a star or a ring anywhere;
    - ``others_exact``: fraction of the ordinary objects found with their colour and shape (None without any);
    - ``bleed`` (two concepts only, else None): a concept's shape in the *other* concept's colour (a star where
      the ring should be, or a ring in the star's colour);
    - ``exact_binding``, ``clean_binding``, ``has_extra``: the ShapesWorld benchmark's.
    """
    from ait2i.shapes.check import check, match

    det = check(image)
    objs = [d for d in det if not d.is_noise]
    objects = [tuple(o) for o in objects]
    concepts = [o for o in objects if o[1] in CONCEPT_SHAPES]
    if not concepts:
        raise ValueError(f"{objects} holds no concept shape ({list(CONCEPT_SHAPES)})")
    others = [o for o in objects if o[1] not in CONCEPT_SHAPES]
    m = match(det, objects)
    mc = match(det, concepts)
    out = {
        "concept": mc["exact_binding"],
        "concept_color": mc["color_present"] == len(concepts),
        "any_concept": any(d.shape in CONCEPT_SHAPES for d in objs),
        "others_exact": match(det, others)["exact"] / len(others) if others else None,
        "bleed": None,
        "exact_binding": m["exact_binding"],
        "clean_binding": m["clean_binding"],
        "has_extra": m["has_extra"],
        "detected": [f"{d.color} {d.shape}" + ("*" if d.mixed else "") for d in objs],
    }
    for shape in CONCEPT_SHAPES:
        mine = [o for o in concepts if o[1] == shape]
        out[f"concept_{shape}"] = match(det, mine)["exact_binding"] if mine else None
    if len({s for _, s in concepts}) > 1:
        out["bleed"] = any(
            d.shape == sa and d.color == cb and (cb, sa) not in concepts
            for d in objs
            for ca, sa in concepts
            for cb, sb in concepts
            if sa != sb
        )
    return out


def _concept_pipe(concept_set: str, kind: str, concepts: Path | None, adapter_weight: float = 1.0):
    """The shipped pipeline with the concepts of ``concept_set`` loaded (``kind`` ``"base"``: none); LoRAs are
    loaded the diffusers way, as named adapters combined by ``set_adapters`` with ``adapter_weight`` each."""
    from ait2i.shapes.model import load_pipeline

    pipe = load_pipeline()
    if kind == "base":
        return pipe
    shapes = CONCEPT_SHAPES if concept_set == MULTI else (concept_set,)
    names = []
    for shape in shapes:
        folder = (concepts or concepts_dir()) / f"{shape}-{kind}"
        if not folder.is_dir():
            raise ValueError(f"no {shape}-{kind} concept folder in {folder.parent}")
        load_concept(pipe, folder, kind, adapter_name=f"{shape}-{kind}")
        names.append(f"{shape}-{kind}")
    if kind == "lora" and (len(names) > 1 or adapter_weight != 1.0):
        pipe.set_adapters(names, adapter_weights=[adapter_weight] * len(names))
    return pipe


def _available(concept_set: str, kind: str, concepts: Path | None) -> bool:
    if kind == "base":
        return True
    shapes = CONCEPT_SHAPES if concept_set == MULTI else (concept_set,)
    return all(((concepts or concepts_dir()) / f"{s}-{kind}").is_dir() for s in shapes)


def _row_key(r: dict) -> tuple:
    return (r.get("concept_set", "star"), r["kind"], r["method"], r["prompt"], r["seed"])


def measure_methods() -> dict:
    """The configs ``measure`` runs, by method name: those of the benchmark's default method set
    (``ait2i bench shapes``, :data:`ait2i.bench.specs.METHOD_SETS` ``"default"``), so Attend-and-Excite guides
    and refines at the same fractions of the run as there (at 20 steps: steps 0-9, refinement at 0, 4 and 8)
    instead of its 50-step windows."""
    from ait2i.bench.specs import parse_methods

    return {cfg.name: cfg for _, cfg in parse_methods("default")}


def _row_settings(method_config: dict, args: argparse.Namespace) -> dict:
    """What a row records of how its image was made, beyond its prompt and seed; a resume must match it."""
    return {"method_config": method_config, "steps": args.steps, "guidance_scale": args.cfg}


def _check_resume(old: list[dict], rows_path: Path, settings: dict[str, dict]) -> None:
    """Refuse to add rows of a method to a folder whose rows of that method were made otherwise (``settings``:
    method -> :func:`_row_settings`), rows from before these were recorded included."""
    for r in old:
        want = settings.get(r["method"])
        got = {k: r.get(k) for k in want or ()}
        if want is not None and got != want:
            keys = [k for k in want if got[k] != want[k]]
            was = (
                {k: got[k] for k in keys} if r.get("method_config") else "not recorded: made before measure recorded it"
            )
            raise ValueError(
                f"{rows_path} holds {r['method']} rows made with another config ({was}) than this run's "
                f"({ {k: want[k] for k in keys} }); measure into another --out folder"
            )


def measure(args: argparse.Namespace) -> None:
    """The ``measure`` command: generates every (concept set, kind, method, prompt, seed), scores it, appends rows
    to ``OUT/rows.jsonl`` (a rerun skips what is there) and writes ``OUT/summary.md``. A (concept set, kind) whose
    concept folders do not exist (e.g. ``ring-ti``) is skipped with a note."""
    from tqdm import tqdm

    import ait2i
    from ait2i.bench.specs import config_dict

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = set()
    if rows_path.exists():
        old = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
        weights = {r.get("adapter_weight", 1.0) for r in old if r["kind"] == "lora"}
        if weights - {args.adapter_weight}:
            raise ValueError(
                f"{rows_path} holds LoRA rows at adapter weight {sorted(weights)}, not {args.adapter_weight}; "
                "measure another weight into another --out folder"
            )
        done = {_row_key(r) for r in old}
    configs = measure_methods()
    methods = set(args.methods) | ({"none"} if "base" in args.kinds else set())
    settings = {m: _row_settings(config_dict(configs[m]), args) for m in methods}
    if rows_path.exists():
        _check_resume(old, rows_path, settings)
    seeds = _parse_seeds(args.seeds)
    concepts = Path(args.concepts) if args.concepts else None
    jobs = []
    for cs in args.sets:
        for k in args.kinds:
            if not _available(cs, k, concepts):
                print(f"skipping {cs} {k}: no {cs.replace('+', f'-{k} / ')}-{k} folder in {concepts or concepts_dir()}")
                continue
            for pi, objs in enumerate(measure_prompts(cs)):
                for m in args.methods if k != "base" else ("none",):
                    jobs.append((cs, k, m, pi, objs))
    bar = tqdm(total=len(jobs), desc="measure", file=sys.stdout, mininterval=10)
    pipes: dict = {}
    for cs, kind, method, pi, objs in jobs:
        prompt, subjects = measure_prompt(objs, kind)
        todo = [s for s in seeds if (cs, kind, method, prompt, s) not in done]
        if todo:
            if (cs, kind) not in pipes:
                pipes.clear()
                pipes[(cs, kind)] = _concept_pipe(cs, kind, concepts, args.adapter_weight)
            pipe = pipes[(cs, kind)]
            check_placeholders(pipe.tokenizer, prompt, subjects)
            gens = [torch.Generator().manual_seed(s) for s in todo]
            res = ait2i.generate(
                pipe, prompt, subjects if method != "none" else None, configs[method], num_inference_steps=args.steps,
                guidance_scale=args.cfg, num_images_per_prompt=len(todo), generator=gens,
            )  # fmt: skip
            with open(rows_path, "a") as f:
                for s, im in zip(todo, res.images):
                    name = f"images/{cs}_{kind}_{method}_{pi}_{s}.png"
                    im.save(out / name)
                    row = {"concept_set": cs, "kind": kind, "method": method, "prompt": prompt}
                    row.update(prompt_index=pi, adapter_weight=args.adapter_weight if kind == "lora" else None)
                    row.update(seed=s, image=name, **settings[method], **score_image(im, objs))
                    f.write(json.dumps(row) + "\n")
        bar.update(1)
    bar.close()
    (out / "summary.md").write_text(summary_table(out))
    print((out / "summary.md").read_text())


def _parse_seeds(spec: str) -> list[int]:
    """``--seeds`` as every ait2i command line reads seeds (:func:`ait2i.cliparse.parse_seeds`)."""
    from ait2i.cliparse import parse_seeds

    return parse_seeds(spec, option="--seeds")


def load_rows(out: Path, rescore: bool = True) -> list[dict]:
    """The rows of ``OUT/rows.jsonl``, each with its ``concept_set`` and ``prompt_index`` (rows of the first,
    star-only runs have neither: star, and the index from the image name), and, with ``rescore``, every metric
    read again from its image by the current checker (a checker change never leaves stale numbers)."""
    from PIL import Image

    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines() if x.strip()]
    for r in rows:
        r.setdefault("concept_set", "star")
        r.setdefault("prompt_index", int(r["image"].split("_")[-2]))
        if rescore or any(m not in r for m in METRICS):
            objs = measure_prompts(r["concept_set"])[r["prompt_index"]]
            if measure_prompt(objs, r["kind"])[0] != r["prompt"]:
                raise ValueError(f"{out}: row {r['image']} says prompt {r['prompt']!r}, not that of its index")
            r.update(score_image(Image.open(out / r["image"]).convert("RGB"), objs))
    return rows


def summary_table(out: Path, rows: list[dict] | None = None) -> str:
    """Markdown tables from ``OUT/rows.jsonl``, one section per concept set: each metric per kind and method (mean
    and 95% two-level bootstrap interval over prompts then seeds), the paired difference against ``none`` of the
    same kind, and the concept rate per prompt."""
    from ait2i.bench.stats import paired, summarize

    rows = load_rows(out) if rows is None else rows
    lines = []
    for cs in CONCEPT_SETS:
        sub = [r for r in rows if r["concept_set"] == cs]
        if not sub:
            continue
        groups: dict = {}
        for r in sub:
            groups.setdefault((r["kind"], r["method"]), []).append(r)
        order = [(k, m) for k in MEASURE_KINDS for m in MEASURE_METHODS if (k, m) in groups]
        per_concept = ("concept_star", "concept_ring") if cs != MULTI else ()  # = "concept" with one concept
        metrics = [m for m in METRICS if m not in per_concept and any(r[m] is not None for r in sub)]

        def values(rs, metric):
            return {(r["prompt_index"], r["seed"]): float(r[metric]) for r in rs if r[metric] is not None}

        weights = sorted({r.get("adapter_weight") or 1.0 for r in sub if r["kind"] == "lora"})
        lines += [f"### {cs}" + (f" (LoRA adapter weight {weights[0]:g})" if weights not in ([], [1.0]) else ""), ""]
        lines.append("images: prompts x seeds of the row; mean [95% interval].\n")
        head = "| kind | method | images | " + " | ".join(METRIC_NAMES[m] for m in metrics) + " |"
        lines += [head, "|" + "---|" * (3 + len(metrics))]
        for k, m in order:
            cells = []
            for metric in metrics:
                v = values(groups[(k, m)], metric)
                if not v:
                    cells.append("-")
                    continue
                st = summarize(v)
                cells.append(f"{st['mean']:.3f} [{st['low']:.2f}, {st['high']:.2f}]")
            rs = groups[(k, m)]
            size = f"{len({r['prompt_index'] for r in rs})} x {len({r['seed'] for r in rs})}"
            lines.append(f"| {k} | {m} | {size} | " + " | ".join(cells) + " |")
        diffs = [(k, m) for k, m in order if m != "none" and (k, "none") in groups]
        if diffs:
            lines += ["", "Paired differences vs `none` (same kind, same prompt and seed):", "", head]
            lines.append("|" + "---|" * (3 + len(metrics)))
            for k, m in diffs:
                cells = []
                for metric in metrics:
                    a, b = values(groups[(k, m)], metric), values(groups[(k, "none")], metric)
                    if not set(a) & set(b):
                        cells.append("-")
                        continue
                    d = paired(a, b)
                    cells.append(f"{d['delta']:+.3f} [{d['low']:+.2f}, {d['high']:+.2f}]")
                n = len(set(values(groups[(k, m)], "concept")) & set(values(groups[(k, "none")], "concept")))
                lines.append(f"| {k} | {m} − none | {n} pairs | " + " | ".join(cells) + " |")
        sizes = sorted({len(measure_prompts(cs)[r["prompt_index"]]) for r in sub})
        if len(sizes) > 1:  # concept present on one-object and on two-object prompts apart
            lines += ["", "Concept present by number of objects in the prompt:", ""]
            lines.append("| kind | method | " + " | ".join(f"{n} object{'s' * (n > 1)}" for n in sizes) + " |")
            lines.append("|" + "---|" * (2 + len(sizes)))
            for k, m in order:
                cells = []
                for n in sizes:
                    rs = [r for r in groups[(k, m)] if len(measure_prompts(cs)[r["prompt_index"]]) == n]
                    st = summarize(values(rs, "concept"))
                    cells.append(f"{st['mean']:.3f} [{st['low']:.2f}, {st['high']:.2f}] ({len(rs)})")
                lines.append(f"| {k} | {m} | " + " | ".join(cells) + " |")
        lines += ["", "Per prompt (concept present / exact binding, mean over seeds):", ""]
        lines.append("| prompt | " + " | ".join(f"{k} {m}" for k, m in order) + " |")
        lines.append("|" + "---|" * (1 + len(order)))
        for pi, objs in enumerate(measure_prompts(cs)):
            cells = []
            for k, m in order:
                rs = [r for r in groups[(k, m)] if r["prompt_index"] == pi]
                cells.append(
                    f"{np.mean([r['concept'] for r in rs]):.2f} / {np.mean([r['exact_binding'] for r in rs]):.2f}"
                    if rs
                    else "-"
                )
            lines.append(f"| {measure_prompt(objs, 'lora')[0]} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def save_grid(
    out: Path, path: Path, picks=None, seeds=range(8), scale: int = 2, rows: list[dict] | None = None, kinds=None
):
    """A PNG of a measure run: for each ``(concept set, prompt index)`` in ``picks`` (default: the first two-object
    prompt of each concept set measured), one row per (kind, method) (of ``kinds``, default all), one column per
    seed; frames: green exact
    binding, orange every concept of the right colour without exact binding, red not."""
    from PIL import Image, ImageDraw

    rows = load_rows(out) if rows is None else rows
    by = {(r["concept_set"], r["kind"], r["method"], r["prompt_index"], r["seed"]): r for r in rows}
    if picks is None:
        picks = [(cs, 0 if cs == MULTI else 2) for cs in CONCEPT_SETS if any(key[0] == cs for key in by)]
    seeds = list(seeds)
    lines = []
    for cs, pi in picks:
        for km in [(k, m) for k in (kinds or MEASURE_KINDS) for m in MEASURE_METHODS]:
            if any(key[:4] == (cs, *km, pi) for key in by):
                lines.append((cs, pi, km))
    if not lines:
        raise ValueError(f"{out}: no rows for {picks}")
    cell = 32 * scale + 4
    grid = Image.new("RGB", (len(seeds) * cell, len(lines) * cell), (255, 255, 255))
    for i, (cs, pi, (k, m)) in enumerate(lines):
        for j, sd in enumerate(seeds):
            r = by.get((cs, k, m, pi, sd))
            if r is None:
                continue
            im = Image.open(out / r["image"]).convert("RGB").resize((32 * scale, 32 * scale), Image.NEAREST)
            colour = (44, 160, 44) if r["exact_binding"] else (255, 127, 14) if r["concept"] else (214, 39, 40)
            x, y = j * cell, i * cell
            ImageDraw.Draw(grid).rectangle((x, y, x + cell - 1, y + cell - 1), fill=colour)
            grid.paste(im, (x + 2, y + 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    legend = [
        f"row {i + 1}: {measure_prompt(measure_prompts(cs)[pi], k)[0]!r} / {k} / {m}"
        for i, (cs, pi, (k, m)) in enumerate(lines)
    ]
    return path, legend


def _parse_picks(items) -> list[tuple[str, int]]:
    out = []
    for it in items:
        cs, _, idx = it.rpartition(":")
        if cs not in CONCEPT_SETS or not idx.isdigit() or int(idx) >= len(measure_prompts(cs)):
            raise ValueError(f"--grid-prompts {it!r}: expected SET:INDEX with SET in {list(CONCEPT_SETS)}")
        out.append((cs, int(idx)))
    return out


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
    m = sub.add_parser(
        "measure", help="concept present / binding / neglect / bleed / extra objects, per concept set, kind, method"
    )
    m.add_argument("--out", required=True, help="folder for rows.jsonl, images/ and summary.md (reruns resume)")
    m.add_argument(
        "--sets", nargs="+", choices=list(CONCEPT_SETS), default=list(CONCEPT_SETS),
        help=f"concept sets: each concept alone, and {MULTI} (both LoRAs loaded together)",
    )  # fmt: skip
    m.add_argument("--kinds", nargs="+", choices=list(MEASURE_KINDS), default=list(MEASURE_KINDS))
    m.add_argument("--methods", nargs="+", choices=list(MEASURE_METHODS), default=list(MEASURE_METHODS))
    m.add_argument("--seeds", default="0-15", help="e.g. 0-15 or 0,3,5-7")
    m.add_argument("--steps", type=int, default=20, help="DDIM steps")
    m.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    m.add_argument(
        "--concepts", default=None, help="folder with star-ti/, star-lora/, ring-lora/ ... (default: the shipped)"
    )
    m.add_argument("--adapter-weight", type=float, default=1.0, help="weight of each LoRA in set_adapters (default 1)")
    m.add_argument("--threads", type=int, default=1)
    r = sub.add_parser("report", help="rewrite OUT/summary.md from OUT/rows.jsonl (and a picture with --grid)")
    r.add_argument("--out", required=True)
    r.add_argument("--grid", default=None, help="also write this PNG (seeds 0-7)")
    r.add_argument(
        "--grid-prompts", nargs="+", default=None, metavar="SET:INDEX",
        help="prompts of the grid, e.g. star:2 star+ring:0 (default: the first two-object prompt of each set)",
    )  # fmt: skip
    r.add_argument("--grid-kinds", nargs="+", choices=list(MEASURE_KINDS), default=None, help="rows of these kinds")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "train":
        train(args)
    elif args.command == "measure":
        measure(args)
    else:
        rows = load_rows(Path(args.out))
        (Path(args.out) / "summary.md").write_text(summary_table(Path(args.out), rows))
        print((Path(args.out) / "summary.md").read_text())
        if args.grid:
            picks = _parse_picks(args.grid_prompts) if args.grid_prompts else None
            _, legend = save_grid(Path(args.out), Path(args.grid), picks, rows=rows, kinds=args.grid_kinds)
            print("\n".join(legend))
    return 0


if __name__ == "__main__":
    sys.exit(main())
