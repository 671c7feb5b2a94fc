"""Personalized concepts of ShapesWorld: what a concept is, where the shipped ones are, and loading them safely.

A concept is a shape the shipped model never saw (:data:`CONCEPT_SHAPES`: the star and the ring), taught to it by
:mod:`ait2i.shapes.personalize` as a textual inversion (``kind="ti"``: a placeholder ``<star>`` of
:data:`TI_VECTORS` vectors, ``learned_embeds.safetensors``) or a LoRA (``kind="lora"``: trigger word ``star``,
``pytorch_lora_weights.safetensors``). The four shipped concepts are in :func:`concepts_dir` (``star-lora/``,
``ring-lora/``, ``star-ti/``, ``ring-ti/``; how they were made: the README there).

:func:`load_concept` loads one into a pipeline, refuses anything but finite safetensors and checks that it went in
(the pipeline is left as it was on a refusal); :func:`load_concepts` loads a set of them, LoRAs combined the
diffusers way (named adapters, ``set_adapters``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ait2i.shapes import render as R

#: The shapes a concept can be: the renderer's shapes outside the training mix (the checker reads both).
CONCEPT_SHAPES: tuple[str, ...] = R.EXTRA_SHAPES  # ("star", "ring")
PLACEHOLDER = "<star>"  # textual-inversion placeholder of the star (the ring's would be "<ring>")
LORA_WORD = "star"  # LoRA trigger word of the star (the ring's is "ring"): the concept's own name
TI_VECTORS = 2
TI_FILE = "learned_embeds.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"
#: Concept kinds: textual inversion and LoRA.
KINDS = ("ti", "lora")


def placeholder(shape: str = "star") -> str:
    """The textual-inversion placeholder of a concept shape: ``"<star>"``, ``"<ring>"``."""
    check_shape(shape)
    return f"<{shape}>"


def check_shape(shape: str) -> None:
    """Refuse a shape that is not a concept shape (:data:`CONCEPT_SHAPES`)."""
    if shape not in CONCEPT_SHAPES:
        raise ValueError(f"unknown concept shape {shape!r}; expected one of {list(CONCEPT_SHAPES)}")


def concepts_dir() -> Path:
    """The shipped concepts (package data): ``star-lora/``, ``ring-lora/``, ``star-ti/``, ``ring-ti/``."""
    from importlib import resources

    return Path(str(resources.files("ait2i") / "shapes" / "concepts"))


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


def load_concepts(
    pipe, shapes, kind: str, folder: str | os.PathLike | None = None, adapter_weight: float = 1.0
) -> list[str]:
    """Loads the concepts of ``shapes`` (e.g. ``("star", "ring")``) of one ``kind`` into ``pipe`` from the folders
    ``<folder>/<shape>-<kind>`` (default: the shipped, :func:`concepts_dir`). LoRAs are loaded the diffusers way,
    as adapters named after their folders (``"star-lora"``) and combined by ``pipe.set_adapters`` with
    ``adapter_weight`` each.

    Returns:
        `list[str]`: what each concept is spelled as in a prompt (placeholder or trigger word), in order.

    Raises:
        ValueError: a concept folder is missing, or :func:`load_concept` refuses a file.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown concept kind {kind!r}; expected 'ti' (textual inversion) or 'lora'")
    base = Path(folder) if folder is not None else concepts_dir()
    names, words = [], []
    for shape in shapes:
        check_shape(shape)
        path = base / f"{shape}-{kind}"
        if not path.is_dir():
            raise ValueError(f"no {shape}-{kind} concept folder in {base}")
        words.append(load_concept(pipe, path, kind, adapter_name=f"{shape}-{kind}"))
        names.append(f"{shape}-{kind}")
    if kind == "lora" and (len(names) > 1 or adapter_weight != 1.0):
        pipe.set_adapters(names, adapter_weights=[adapter_weight] * len(names))
    return words
