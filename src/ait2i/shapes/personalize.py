"""A real personalized concept on ShapesWorld: the star, a shape the shipped model never saw.

    python -m ait2i.shapes.personalize train --kind ti   --out train-runs/star-ti   [--resume]
    python -m ait2i.shapes.personalize train --kind lora --out train-runs/star-lora [--resume]
    python -m ait2i.shapes.personalize measure --out runs/personalize [--seeds 0-15]

The renderer (:mod:`ait2i.shapes.render`) can draw a five-pointed star that is outside the training mix; the
checker (:mod:`ait2i.shapes.check`) recognises it. The concept data are :data:`NUM_RENDERS` fixed renders
(:func:`concept_scenes`): a star in each of the six colours at various positions and sizes, half of them alone and
half next to one ordinary shape of another colour (so that the concept composes: "a red <star> and a blue square").

- **textual inversion** (``--kind ti``): a new placeholder ``<star>`` of :data:`TI_VECTORS` vectors is added to the
  CLIP tokenizer and text encoder (prompts spell it ``<star>``; the pipeline expands it to ``<star> <star>_1``
  as diffusers does), initialised from the mean embedding of "circle", "square" and "triangle"; only its rows of
  the token-embedding matrix train (every other weight is frozen, the other rows are restored after each step).
  Saved as ``learned_embeds.safetensors`` (``{"<star>": (TI_VECTORS, 128)}``, diffusers' own
  ``textual_inversion.py`` format), loaded by ``pipe.load_textual_inversion(path, token="<star>")``.
- **LoRA** (``--kind lora``): rank-:data:`LORA_RANK` LoRA (peft) on the UNet's attention projections (``to_q``,
  ``to_k``, ``to_v``, ``to_out.0`` of self- and cross-attention) and feed-forward layers, UNet only. The trigger is
  the plain word **"star"**: one CLIP token (``star</w>``) the shipped text encoder never saw in training (its
  embedding is still the random initialisation), so it is a rare word to this model and prompts stay natural
  ("a red star and a blue square"); the checker's shape name is the same word. DreamBooth-style prior
  preservation: every batch is half concept renders, half images the *base model* generated from ordinary
  training-mix captions (:func:`prior_images`), so the LoRA keeps what the model already drew. Saved with
  ``StableDiffusionPipeline.save_lora_weights`` as ``pytorch_lora_weights.safetensors``, loaded by
  ``pipe.load_lora_weights(path)``.

Both objectives are the shipped model's (v-prediction, cosine schedule, uniform timesteps; see
:mod:`ait2i.shapes.train`). Every step's batch and noise come from ``(seed, step)``, so a resumed run (``--resume``,
from ``OUT/ckpt.pt``, written every ``--ckpt-minutes``) sees the same data as an uninterrupted one.

:func:`load_concept` loads a shipped or trained concept into a pipeline and refuses anything but safetensors.
The ``measure`` command is the evaluation of docs/results/personalization.md.
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
from ait2i.subjects import check_placeholders, loaded_placeholders  # noqa: F401 - re-exported for users

PLACEHOLDER = "<star>"  # textual-inversion placeholder
LORA_WORD = "star"  # LoRA trigger word
TI_VECTORS = 2
TI_INIT_WORDS = ("circle", "square", "triangle")
LORA_RANK = 8
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
NUM_RENDERS = 48
TI_FILE = "learned_embeds.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"

KIND_DEFAULTS = {
    "ti": {"steps": 800, "lr": 5e-3, "batch_size": 16},
    "lora": {"steps": 600, "lr": 1e-3, "batch_size": 16},
}


def concepts_dir() -> Path:
    """The shipped concepts (package data): ``star-ti/`` and ``star-lora/``."""
    from importlib import resources

    return Path(str(resources.files("ait2i") / "shapes" / "concepts"))


# -- data --------------------------------------------------------------------------------------------------------


def concept_scenes(seed: int = 0, n: int = NUM_RENDERS) -> list[R.Scene]:
    """The ``n`` concept renders: star ``i`` is in colour ``i % 6``; even ``i`` alone, odd ``i`` with one ordinary
    shape (circle, square or triangle in turn) of another colour. Deterministic in ``seed``."""
    colors = list(R.COLORS)
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, 7, i])
        c = colors[i % len(colors)]
        if i % 2 == 0:
            out.append(R.sample_scene(rng, 1, colors=[c], shapes=["star"]))
        else:
            other = str(rng.choice([x for x in colors if x != c]))
            shape = R.SHAPES[(i // 2) % len(R.SHAPES)]
            objs = [("star", c), (shape, other)]
            if rng.random() < 0.5:
                objs.reverse()
            out.append(R.sample_scene(rng, 2, colors=[o[1] for o in objs], shapes=[o[0] for o in objs]))
    return out


def concept_caption(scene: R.Scene, word: str, rng: np.random.Generator) -> str:
    """The scene's caption with the star named ``word`` (``"<star>"`` or ``"star"``), objects in random order."""
    phrases = [f"{o.color} {word if o.shape == 'star' else o.shape}" for o in scene.objects]
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


def lora_config(rank: int = LORA_RANK):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS))


def save_ti(text_encoder, ids: list[int], folder: Path, token: str = PLACEHOLDER) -> Path:
    from safetensors.torch import save_file

    vec = text_encoder.get_input_embeddings().weight[ids].detach().to(torch.float32).clone()  # (V, 128)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TI_FILE
    tmp = folder / (TI_FILE + ".tmp")
    save_file({token: vec.contiguous()}, str(tmp))
    os.replace(tmp, path)
    return path


def save_lora(unet, folder: Path) -> Path:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in sd.items()}
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=sd, safe_serialization=True)
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
    ):
        from ait2i.shapes import model as M

        if kind not in KIND_DEFAULTS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KIND_DEFAULTS)}")
        d = KIND_DEFAULTS[kind]
        self.kind, self.seed = kind, seed
        self.lr = d["lr"] if lr is None else lr
        self.batch_size = d["batch_size"] if batch_size is None else batch_size
        self.pipe = pipe
        self.tok, self.te, self.unet = pipe.tokenizer, pipe.text_encoder, pipe.unet
        self.te.requires_grad_(False)
        self.unet.requires_grad_(False)
        pipe.vae.requires_grad_(False)
        self.alphas = M.build_scheduler().alphas_cumprod.float()
        self.scenes = concept_scenes(seed)
        self.images = _to_tensor([R.render(s) for s in self.scenes])  # (N, 3, 32, 32)
        torch.manual_seed(seed)
        if kind == "ti":
            self.ids = add_placeholder(self.tok, self.te)
            emb = self.te.get_input_embeddings().weight
            emb.requires_grad_(True)
            self.frozen = emb.detach().clone()
            self.keep = torch.ones(emb.shape[0], dtype=torch.bool)
            self.keep[self.ids] = False
            self.params = [emb]
            self.prior = None
        else:
            self.prior = prior_images(pipe, seed, n=prior_n, steps=prior_steps)
            self.unet.add_adapter(lora_config())
            self.params = [p for p in self.unet.parameters() if p.requires_grad]
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
        word = PLACEHOLDER if self.kind == "ti" else LORA_WORD
        caps = [concept_caption(self.scenes[i], word, rng) for i in pick]
        if self.kind == "ti":
            caps = [expand(c) for c in caps]
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
            return save_ti(self.te, self.ids, folder)
        return save_lora(self.unet, folder)


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
    tr = Trainer(pipe, args.kind, seed=args.seed, lr=args.lr, batch_size=args.batch_size)
    setup_s = time.time() - t_setup
    ck = out / "ckpt.pt"
    history = {"runs": [], "train_seconds": 0.0}
    if args.resume and ck.exists():
        st = torch.load(ck, map_location="cpu", weights_only=True)
        if st["kind"] != args.kind:
            raise ValueError(f"{ck} is a --kind {st['kind']} checkpoint")
        tr.load_state(st["trainer"])
        history = st["history"]
        print(f"resumed from {ck} at step {tr.step}", flush=True)
    elif args.resume:
        raise ValueError(f"--resume given but {ck} does not exist; drop --resume to start fresh")
    command = " ".join(["python", "-m", "ait2i.shapes.personalize", *sys.argv[1:]])
    history["runs"].append({"start_step": tr.step, "command": command, "commit": _git_commit()})

    def checkpoint() -> None:
        st = {"kind": args.kind, "trainer": tr.state(), "history": history}
        torch.save(st, out / "ckpt.tmp")
        os.replace(out / "ckpt.tmp", ck)

    t0 = time.time()
    last = t0
    bar = tqdm(total=steps, initial=tr.step, desc=f"personalize {args.kind}", mininterval=10, file=sys.stdout)
    losses = []
    while tr.step < steps:
        losses.append(tr.train_step(steps))
        bar.update(1)
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
        "kind": args.kind, "seed": args.seed, "steps": steps, "lr": tr.lr, "batch_size": tr.batch_size,
        "renders": NUM_RENDERS, "train_seconds": round(history["train_seconds"], 1),
        "setup_seconds": round(setup_s, 1), "threads": args.threads, "runs": history["runs"],
        "command": history["runs"][0]["command"], "commit": history["runs"][0]["commit"],
        "file": path.name, "bytes": path.stat().st_size,
    }  # fmt: skip
    if args.kind == "ti":
        info.update(token=PLACEHOLDER, vectors=TI_VECTORS, init_words=list(TI_INIT_WORDS))
    else:
        info.update(trigger_word=LORA_WORD, rank=LORA_RANK, targets=list(LORA_TARGETS), prior_images=NUM_RENDERS)
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


def load_concept(pipe, folder_or_file: str | os.PathLike, kind: str, token: str | None = None) -> str:
    """Loads a textual inversion (``kind="ti"``) or a LoRA (``kind="lora"``) into ``pipe``; safetensors only.

    Args:
        pipe: a diffusers pipeline with ``load_textual_inversion`` / ``load_lora_weights``.
        folder_or_file: a concept folder (e.g. ``concepts_dir() / "star-ti"``, or a training run's ``concept/``)
            or its weights file.
        kind (`str`): ``"ti"`` or ``"lora"``.
        token (`str`, *optional*): the placeholder of a textual inversion; defaults to the folder's
            ``TRAINING.json`` ``token``, else the key stored in the file.

    Returns:
        `str`: the placeholder (``"<star>"``; multi-vector placeholders expand in prompts as diffusers does) or,
        for a LoRA, its trigger word from ``TRAINING.json`` (``"star"``), else the adapter name.
    """
    path = concept_file(folder_or_file, kind)
    meta_path = path.parent / "TRAINING.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if kind == "ti":
        if token is None:
            token = meta.get("token")
        if token is None:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                keys = list(f.keys())
            token = keys[0] if len(keys) == 1 and keys[0] not in ("string_to_param", "emb_params") else None
        if token is None:
            raise ValueError(f"{path}: say which placeholder the embedding is for with token='<...>'")
        pipe.load_textual_inversion(str(path), token=token)
        return token
    adapter = path.parent.name or "concept"
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
    return meta.get("trigger_word", adapter)


# -- measurement -----------------------------------------------------------------------------------------------

#: The evaluation prompts, with ``{star}`` for the concept's word: objects as ``(colour, shape)`` in prompt order.
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
MEASURE_METHODS = ("none", "attend-and-excite", "ait2i")
#: ``kind -> how the star is spelled``: the two concepts and the base model with the plain word (reference).
MEASURE_WORDS = {"ti": PLACEHOLDER, "lora": LORA_WORD, "base": LORA_WORD}
METRICS = ("concept", "concept_color", "any_star", "others_exact", "exact_binding", "clean_binding", "has_extra")


def measure_prompt(objects, word: str) -> tuple[str, list[str]]:
    """The prompt text and its subjects (``"red <star>"``, ``"blue square"``) for ``objects``."""
    phrases = [f"{c} {word if s == 'star' else s}" for c, s in objects]
    return R.caption_of(phrases), phrases


def score_image(image, objects) -> dict:
    """Per-image metrics: ``concept`` (a one-colour star of the requested colour), ``concept_color`` (an object of
    any shape in the star's colour: the concept word was not neglected), ``any_star``, ``others_exact``
    (fraction of the ordinary objects found with their colour and shape; None without any), ``exact_binding``,
    ``clean_binding``, ``has_extra`` (more objects than requested), from :func:`ait2i.shapes.check.check`."""
    from ait2i.shapes.check import check, match

    det = check(image)
    objs = [d for d in det if not d.is_noise]
    m = match(det, list(objects))
    star_color = next(c for c, s in objects if s == "star")
    others = [o for o in objects if o[1] != "star"]
    return {
        "concept": any(d.shape == "star" and d.color == star_color and not d.mixed for d in objs),
        "concept_color": any(d.color == star_color for d in objs),
        "any_star": any(d.shape == "star" for d in objs),
        "others_exact": match(det, others)["exact"] / len(others) if others else None,
        "exact_binding": m["exact_binding"],
        "clean_binding": m["clean_binding"],
        "has_extra": m["has_extra"],
        "detected": [f"{d.color} {d.shape}" + ("*" if d.mixed else "") for d in objs],
    }


def _concept_pipe(kind: str, concepts: Path | None):
    from ait2i.shapes.model import load_pipeline

    pipe = load_pipeline()
    if kind != "base":
        folder = (concepts or concepts_dir()) / f"star-{kind}"
        load_concept(pipe, folder, kind)
    return pipe


def measure(args: argparse.Namespace) -> None:
    """The ``measure`` command: generates every (kind, method, prompt, seed), scores it, appends rows to
    ``OUT/rows.jsonl`` (a rerun skips what is there) and writes ``OUT/summary.md``."""
    from tqdm import tqdm

    import ait2i

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = set()
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            r = json.loads(line)
            done.add((r["kind"], r["method"], r["prompt"], r["seed"]))
    seeds = _parse_seeds(args.seeds)
    concepts = Path(args.concepts) if args.concepts else None
    jobs = [
        (k, m, objs)
        for k in args.kinds
        for objs in MEASURE_PROMPTS
        for m in (args.methods if k != "base" else ("none",))
    ]
    bar = tqdm(total=len(jobs), desc="measure", file=sys.stdout, mininterval=10)
    pipes: dict = {}
    for kind, method, objs in jobs:
        prompt, subjects = measure_prompt(objs, MEASURE_WORDS[kind])
        todo = [s for s in seeds if (kind, method, prompt, s) not in done]
        if todo:
            if kind not in pipes:
                pipes.clear()
                pipes[kind] = _concept_pipe(kind, concepts)
            pipe = pipes[kind]
            check_placeholders(pipe.tokenizer, prompt, subjects)
            gens = [torch.Generator().manual_seed(s) for s in todo]
            res = ait2i.generate(
                pipe, prompt, subjects if method != "none" else None, method, num_inference_steps=args.steps,
                guidance_scale=args.cfg, num_images_per_prompt=len(todo), generator=gens,
            )  # fmt: skip
            with open(rows_path, "a") as f:
                for s, im in zip(todo, res.images):
                    name = f"images/{kind}_{method}_{MEASURE_PROMPTS.index(objs)}_{s}.png"
                    im.save(out / name)
                    row = {"kind": kind, "method": method, "prompt": prompt, "seed": s, "image": name}
                    row.update(score_image(im, objs))
                    f.write(json.dumps(row) + "\n")
        bar.update(1)
    bar.close()
    (out / "summary.md").write_text(summary_table(out))
    print((out / "summary.md").read_text())


def _parse_seeds(spec: str) -> list[int]:
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def summary_table(out: Path) -> str:
    """Markdown tables from ``OUT/rows.jsonl``: each metric per kind and method (mean and 95% two-level bootstrap
    interval over prompts then seeds) and the paired difference against ``none`` of the same kind."""
    from ait2i.bench.stats import paired, summarize

    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    for r in rows:  # rows written before a metric existed: score their image again
        if any(m not in r for m in METRICS):
            from PIL import Image

            objs = next(o for o in MEASURE_PROMPTS if measure_prompt(o, MEASURE_WORDS[r["kind"]])[0] == r["prompt"])
            r.update(score_image(Image.open(out / r["image"]).convert("RGB"), objs))
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["kind"], r["method"]), []).append(r)
    order = [(k, m) for k in ("ti", "lora", "base") for m in MEASURE_METHODS if (k, m) in groups]

    def values(rs, metric, only_multi=False):
        return {
            (r["prompt"], r["seed"]): float(r[metric])
            for r in rs
            if r[metric] is not None and (not only_multi or " and " in r["prompt"])
        }

    lines = []
    names = {
        "concept": "concept present (star of the right colour)", "any_star": "any star",
        "concept_color": "star's colour present (any shape)",
        "others_exact": "other objects exact (1 - neglect/mis-binding)", "exact_binding": "exact binding",
        "clean_binding": "clean binding", "has_extra": "extra objects",
    }  # fmt: skip
    n_prompts = len({r["prompt"] for r in rows if r["kind"] == "ti"}) or len({r["prompt"] for r in rows})
    n_seeds = len({r["seed"] for r in rows})
    lines.append(f"{n_prompts} prompts x {n_seeds} seeds per row; mean [95% interval]; Δ vs none of the same kind.\n")
    head = "| kind | method | " + " | ".join(names[m] for m in METRICS) + " |"
    lines += [head, "|" + "---|" * (2 + len(METRICS))]
    for k, m in order:
        cells = []
        for metric in METRICS:
            s = summarize(values(groups[(k, m)], metric))
            cells.append(f"{s['mean']:.3f} [{s['low']:.2f}, {s['high']:.2f}]")
        lines.append(f"| {k} | {m} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences vs `none` (same kind, same prompt and seed):", "", head]
    lines.append("|" + "---|" * (2 + len(METRICS)))
    for k, m in order:
        if m == "none" or (k, "none") not in groups:
            continue
        cells = []
        for metric in METRICS:
            d = paired(values(groups[(k, m)], metric), values(groups[(k, "none")], metric))
            cells.append(f"{d['delta']:+.3f} [{d['low']:+.2f}, {d['high']:+.2f}]")
        lines.append(f"| {k} | {m} − none | " + " | ".join(cells) + " |")
    lines += ["", "Per prompt (concept present / exact binding, mean over seeds):", ""]
    prompts = list(dict.fromkeys(r["prompt"].replace(PLACEHOLDER, LORA_WORD) for r in rows))
    lines.append("| prompt | " + " | ".join(f"{k} {m}" for k, m in order) + " |")
    lines.append("|" + "---|" * (1 + len(order)))
    for p in prompts:
        cells = []
        for k, m in order:
            rs = [r for r in groups[(k, m)] if r["prompt"].replace(PLACEHOLDER, LORA_WORD) == p]
            cells.append(
                f"{np.mean([r['concept'] for r in rs]):.2f} / {np.mean([r['exact_binding'] for r in rs]):.2f}"
                if rs
                else "-"
            )
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_grid(out: Path, path: Path, prompts_index=(2, 6), seeds=range(8), scale: int = 2):
    """A PNG of a measure run: for each prompt in ``prompts_index`` (into :data:`MEASURE_PROMPTS`), one row per
    (kind, method), one column per seed; frames: green exact binding, orange star of the right colour without exact
    binding, red no such star."""
    from PIL import Image, ImageDraw

    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    by = {(r["kind"], r["method"], r["image"].split("_")[-2], r["seed"]): r for r in rows}
    order = [(k, m) for k in ("ti", "lora", "base") for m in MEASURE_METHODS]
    order = [km for km in order if any(key[:2] == km for key in by)]
    cell = 32 * scale + 4
    lines = [(pi, km) for pi in prompts_index for km in order]
    grid = Image.new("RGB", (len(list(seeds)) * cell, len(lines) * cell), (255, 255, 255))
    for i, (pi, (k, m)) in enumerate(lines):
        for j, sd in enumerate(seeds):
            r = by.get((k, m, str(pi), sd))
            if r is None:
                continue
            im = Image.open(out / r["image"]).convert("RGB").resize((32 * scale, 32 * scale), Image.NEAREST)
            colour = (44, 160, 44) if r["exact_binding"] else (255, 127, 14) if r["concept"] else (214, 39, 40)
            x, y = j * cell, i * cell
            ImageDraw.Draw(grid).rectangle((x, y, x + cell - 1, y + cell - 1), fill=colour)
            grid.paste(im, (x + 2, y + 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    legend = [f"row {i + 1}: {MEASURE_PROMPTS[pi]} / {k} / {m}" for i, (pi, (k, m)) in enumerate(lines)]
    return path, legend


# -- command line ------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="learn the star by textual inversion or LoRA")
    t.add_argument("--kind", choices=sorted(KIND_DEFAULTS), required=True)
    t.add_argument("--out", required=True, help="run folder (ckpt.pt, metrics.jsonl, concept/)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--ckpt-minutes", type=float, default=2.0)
    t.add_argument("--resume", action="store_true")
    m = sub.add_parser("measure", help="concept present / binding / neglect / extra objects, per kind and method")
    m.add_argument("--out", required=True, help="folder for rows.jsonl, images/ and summary.md (reruns resume)")
    m.add_argument("--kinds", nargs="+", choices=[*KINDS, "base"], default=[*KINDS, "base"])
    m.add_argument("--methods", nargs="+", default=list(MEASURE_METHODS))
    m.add_argument("--seeds", default="0-15", help="e.g. 0-15 or 0,3,5-7")
    m.add_argument("--steps", type=int, default=20, help="DDIM steps")
    m.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    m.add_argument("--concepts", default=None, help="folder with star-ti/ and star-lora/ (default: shipped)")
    m.add_argument("--threads", type=int, default=1)
    r = sub.add_parser("report", help="rewrite OUT/summary.md from OUT/rows.jsonl (and a picture with --grid)")
    r.add_argument("--out", required=True)
    r.add_argument("--grid", default=None, help="also write this PNG (prompts 3 and 7, seeds 0-7)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "train":
        train(args)
    elif args.command == "measure":
        measure(args)
    else:
        (Path(args.out) / "summary.md").write_text(summary_table(Path(args.out)))
        print((Path(args.out) / "summary.md").read_text())
        if args.grid:
            _, legend = save_grid(Path(args.out), Path(args.grid))
            print("\n".join(legend))
    return 0


if __name__ == "__main__":
    sys.exit(main())
