"""Loading a model: the shipped ShapesWorld names, local diffusers folders and hub ids, the dtype and the scheduler.

The one loader of ``ait2i generate``, ``ait2i tokens``, ``ait2i bench``, ``ait2i tune`` and the demo: safetensors
weights only; ``None`` (or :data:`SHIPPED_MODEL`) is the shipped ShapesWorld UNet, ``"shapesworld-mmdit"`` its MM-DiT
sibling (a local folder of either name wins). A model that cannot be loaded is one `ValueError` naming it and what
to pass instead.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from .hosts import host_named
from .hosts.schedulers import scheduler_from_name

SHIPPED_MODEL = "shapesworld"  # what --model defaults to, as recorded in the metadata
#: ``--model`` names of the shipped ShapesWorld models (a local folder of that name wins): the SD 1.x UNet (the
#: default) and its SD3-family sibling, the MM-DiT.
SHIPPED_MODELS = (SHIPPED_MODEL, "shapesworld-mmdit")
#: Weight dtypes the loader takes (float16 needs CUDA; bfloat16 runs on CPU too).
DTYPES = ("float32", "float16", "bfloat16")


def shipped_name(model: str | None) -> str | None:
    """The shipped model ``model`` names (``None`` is :data:`SHIPPED_MODEL`), or None for a folder or a hub id."""
    if model is None:
        return SHIPPED_MODEL
    return model if model in SHIPPED_MODELS and not Path(model).exists() else None


def shipped_folder(name: str) -> Path:
    """The diffusers folder of the shipped model ``name`` (one of :data:`SHIPPED_MODELS`)."""
    from .shapes.model import model_folder, pretrained_mmdit_dir  # imports torch: only when a model is used

    return model_folder(pretrained_mmdit_dir() if name == "shapesworld-mmdit" else None)


def check_hub_id(model: str) -> None:
    """Refuse a ``model`` that is neither an existing folder nor shaped like a hub id (``org/name``)."""
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model:
        raise ValueError(f"model folder {model!r} does not exist; pass an existing diffusers folder or a hub id")


def load_error(model: str, e: Exception) -> str:
    """The message of a model that could not be loaded."""
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return (
        f"cannot load model {model!r} ({type(e).__name__}: {reason[:300]}). Pass a local diffusers folder "
        "(model_index.json inside) or a hub id whose files are cached or downloadable from this machine."
    )


def _absent_components(model_index: Path) -> dict:
    """Components a local folder saved as absent (``[null, null]``, e.g. SD3 without T5): passed as ``None``, which
    diffusers requires for the ones that are not optional in the pipeline class."""
    if not model_index.is_file():
        return {}
    entries = json.loads(model_index.read_text())
    return {k: None for k, v in entries.items() if not k.startswith("_") and v == [None, None]}


def load_model(model: str | None, dtype: str = "float32", scheduler: str = "default"):
    """Load a diffusers pipeline (``None``: the shipped ShapesWorld model) and set its scheduler.

    Args:
        model (`str`, *optional*): a local diffusers folder, a hub id (safetensors weights only), or the name of a
            shipped ShapesWorld model (:data:`SHIPPED_MODELS`).
        dtype (`str`, *optional*, defaults to `"float32"`): ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        scheduler (`str`, *optional*, defaults to `"default"`): a short name of
            ``ait2i.hosts.schedulers.SCHEDULER_NAMES`` (``"ddim"``, ``"euler"``, ...) or ``"default"`` (the
            model's own).
    """
    import torch

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {', '.join(dtypes)}, got {dtype!r}")
    torch_dtype = dtypes[dtype]
    if model == "shapesworld-mmdit" and not Path(model).exists():
        from .shapes.model import load_sd3_pipeline  # imports torch: only when a model is loaded

        try:
            pipe = load_sd3_pipeline(None, dtype=torch_dtype)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load the shipped ShapesWorld MM-DiT ({e})") from None
    elif model is None or (model == SHIPPED_MODEL and not Path(model).exists()):
        try:
            from .shapes.model import load_pipeline  # imports torch: only when a model is loaded
        except ImportError as e:
            raise ValueError(
                f"the shipped ShapesWorld model is not available in this installation ({e}); "
                "pass --model <hub id or local diffusers folder>"
            ) from None
        try:
            pipe = load_pipeline(dtype=torch_dtype)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"cannot load the shipped ShapesWorld model ({e}); pass --model <hub id or local diffusers folder>"
            ) from None
    else:
        from diffusers import DiffusionPipeline  # heavy: only when a model is loaded

        path = Path(model).expanduser()
        if not path.exists():
            check_hub_id(model)
        elif not (path / "model_index.json").is_file():
            raise ValueError(f"{model!r} is not a diffusers pipeline folder (no model_index.json in it)")
        try:
            with warnings.catch_warnings():  # diffusers >= 0.36 renames torch_dtype; older ones know only it
                warnings.simplefilter("ignore", FutureWarning)
                pipe = DiffusionPipeline.from_pretrained(
                    str(path) if path.exists() else model,
                    torch_dtype=torch_dtype,
                    use_safetensors=True,
                    **_absent_components(path / "model_index.json"),
                )
        except Exception as e:  # noqa: BLE001 - network, missing files, wrong format: one clear message
            raise ValueError(load_error(model, e)) from None
    if scheduler != "default":
        pipe.scheduler = scheduler_from_name(scheduler, pipe.scheduler.config)
    return pipe


def _tokenizer_component(model_index: Path) -> str:
    """The subfolder of the tokenizer the subjects resolve on, from a folder's ``model_index.json`` (Flux: T5's)."""
    if not model_index.is_file():
        return "tokenizer"
    host = host_named(json.loads(model_index.read_text()).get("_class_name", ""))
    return host.tokenizer_component if host is not None else "tokenizer"


def load_tokenizer(model: str | None):
    """The tokenizer the subjects of ``model`` resolve on, without loading the model (``None``: the shipped one)."""
    from transformers import AutoTokenizer  # heavy: only when a tokenizer is loaded

    if model is None or (model in SHIPPED_MODELS and not Path(model).exists()):
        from .shapes.model import pretrained_dir, pretrained_mmdit_dir  # imports torch: only when used

        folder = pretrained_mmdit_dir() if model == "shapesworld-mmdit" else pretrained_dir()
        return AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    try:
        path = Path(model).expanduser()
        if path.is_dir():
            sub = path / _tokenizer_component(path / "model_index.json")
            return AutoTokenizer.from_pretrained(str(sub if sub.is_dir() else path))
        check_hub_id(model)
        from huggingface_hub import hf_hub_download

        component = _tokenizer_component(Path(hf_hub_download(model, "model_index.json")))
        return AutoTokenizer.from_pretrained(model, subfolder=component)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear message
        raise ValueError(load_error(model, e)) from None


def model_identity(model: str | None) -> str:
    """How a run's manifest names a model: a local folder by the SHA-256 of its weights (two copies agree), a hub
    id as it is, the shipped ShapesWorld models as ``shapesworld:<sha>`` and ``shapesworld-mmdit:<sha>``."""
    shipped = shipped_name(model)
    if shipped is not None:
        return f"{shipped}:" + model_identity(str(shipped_folder(shipped))).partition(":")[2]
    folder = Path(model)
    if not folder.is_dir():
        return model
    files = sorted(folder.glob("*/*.safetensors"))
    if not files:
        raise ValueError(f"{folder} holds no */*.safetensors weights")
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(f.read_bytes())
    return f"sha256:{h.hexdigest()[:16]}"
