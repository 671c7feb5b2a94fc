"""What every attention capture shares: the store the processors record into, the processor base class, and the
installation of capture processors on a denoiser's attention layers (docs/method.md, section 1).

A capture installs processors with ``set_attn_processor`` on the attention layers a host reads, keyed by module
path; they record only while their store is recording (the guided forward pass, in the thread that started it) and
defer to the original processor otherwise. The original processors are restored when the capture's context exits,
also by an exception. While recording, the pass ends as soon as the last read layer has been recorded
(:class:`StopForward`): the rest of the denoiser does not influence the maps, so neither its forward nor its backward
pass is computed.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Reads:
    """Where a guided pass reads its maps: the attention processors ``layers`` of the denoiser, whose queries lie on
    the grid ``grid``, recorded and averaged over layers and heads, then average-pooled to ``res`` (the maps' side).
    """

    layers: tuple[str, ...]
    grid: tuple[int, int]
    res: tuple[int, int]


class StopForward(Exception):
    """Raised by the last recording layer to end the guided forward pass early."""


class AttentionStore:
    """Running mean of cross-attention probabilities over the selected layers and their heads.

    The mean is taken over all (layer, head) pairs, as diffusers' Attend-and-Excite store does when it concatenates
    ``(batch * heads, Q, L)`` tensors of every layer.
    """

    def __init__(self, res: tuple[int, int], layers: list[str]):
        self.res = res  # (h, w) of the maps
        self.layers = list(layers)
        self._recording = False
        self._owner: int | None = None  # the thread whose guided pass records (others share the model, unrecorded)
        self.stop_early = True
        self._sum: torch.Tensor | None = None  # (B, Q, L)
        self._count = 0
        self._seen: set[str] = set()

    @property
    def recording(self) -> bool:
        """Recording, and called from the thread that started it."""
        return self._recording and threading.get_ident() == self._owner

    def start(self) -> None:
        self._sum, self._count, self._seen = None, 0, set()
        self._owner = threading.get_ident()
        self._recording = True

    def stop(self) -> None:
        self._recording = False

    def add(self, name: str, probs: torch.Tensor, heads: int) -> None:
        """Accumulate ``probs`` of shape ``(B * heads, Q, L)`` from layer ``name``."""
        bh, q, length = probs.shape
        per_head_sum = probs.reshape(bh // heads, heads, q, length).sum(1)  # (B, Q, L)
        self._sum = per_head_sum if self._sum is None else self._sum + per_head_sum
        self._count += heads
        self._seen.add(name)
        if self.stop_early and len(self._seen) == len(self.layers):
            raise StopForward

    def maps(self) -> torch.Tensor:
        """The recorded maps as ``(B, h, w, L)`` float32."""
        if self._sum is None:
            raise RuntimeError("no attention was recorded: the guided forward pass reached no selected layer")
        b, q, length = self._sum.shape
        return (self._sum / self._count).float().reshape(b, self.res[0], self.res[1], length)


class GridAttentionStore(AttentionStore):
    """:class:`AttentionStore` on a transformer's token grid ``grid``, returning maps average-pooled to ``res``."""

    def __init__(self, grid: tuple[int, int], res: tuple[int, int], layers: list[str]):
        super().__init__(res, layers)
        self.grid = tuple(grid)

    def maps(self) -> torch.Tensor:
        """The recorded maps as ``(B, h, w, L)`` float32 at ``res``."""
        if self._sum is None:
            raise RuntimeError("no attention was recorded: the guided forward pass reached no read block")
        b, _, length = self._sum.shape
        m = (self._sum / self._count).float().reshape(b, *self.grid, length)
        if self.grid != tuple(self.res):
            m = F.avg_pool2d(m.permute(0, 3, 1, 2), self.grid[0] // self.res[0]).permute(0, 2, 3, 1)
        return m


class WrappingProcessor:
    """An attention processor that stands in for ``original``: called like it, and looking like it to
    ``Attention.forward``, which filters ``cross_attention_kwargs`` by ``inspect.signature(processor.__call__)``.

    Subclasses implement ``_call(attn, hidden_states, *args, **kwargs)`` and pass the arguments on unchanged.
    """

    def __init__(self, store: AttentionStore, name: str, original):
        self.store = store
        self.name = name
        self.original = original
        try:
            signature = inspect.signature(original.__call__)
        except (TypeError, ValueError):
            signature = None

        def call(attn, hidden_states, *args, **kwargs):
            return self._call(attn, hidden_states, *args, **kwargs)

        if signature is not None:
            call.__signature__ = signature
        self.__call__ = call  # what Attention.forward inspects; the instance is called through type(self).__call__

    def __call__(self, attn, hidden_states, *args, **kwargs):
        return self._call(attn, hidden_states, *args, **kwargs)

    def _call(self, attn, hidden_states, *args, **kwargs):
        raise NotImplementedError


#: ``make_processor(store, name, original) -> processor`` for one read layer.
ProcessorFactory = Callable[[AttentionStore, str, object], WrappingProcessor]


@contextmanager
def install_capture(model, store: AttentionStore, make_processor: ProcessorFactory):
    """Install ``make_processor(store, name, original)`` on the attention processors ``store.layers`` of ``model``;
    yield ``store``; always restore the original processors."""
    original = dict(model.attn_processors)
    procs = {n: (make_processor(store, n, p) if n in store.layers else p) for n, p in original.items()}
    model.set_attn_processor(procs)
    try:
        yield store
    finally:
        model.set_attn_processor(original)


def capture_blocks(transformer, reads: Reads, make_processor: ProcessorFactory, what: str):
    """Install ``make_processor(store, name, original)`` on the attention processors ``reads.layers`` of a
    transformer; yield their :class:`GridAttentionStore` (maps pooled from ``reads.grid`` to ``reads.res``); always
    restore the processors.

    Raises:
        ValueError: a layer the transformer does not have (``what`` names the kind of attention expected).
    """
    layers = list(reads.layers)
    missing = [n for n in layers if n not in transformer.attn_processors]
    if missing:
        raise ValueError(f"{type(transformer).__name__} has no {what} {missing}")
    return install_capture(transformer, GridAttentionStore(reads.grid, reads.res, layers), make_processor)


def block_layers(blocks, attention: str) -> tuple[str, ...]:
    """The processor names of attention ``attention`` (``"attn"``, ``"attn2"``) in ``transformer_blocks`` ``blocks``."""
    return tuple(f"transformer_blocks.{i}.{attention}.processor" for i in blocks)


#: The read side a host picks when ``attn_res`` is ``None``: Attend-and-Excite's 16x16 (SD 1.x at 512 px).
DEFAULT_READ_SIDE = 16


def pooled_res(
    grid: tuple[int, int], attn_res: int | None, name: str = "the transformer's token grid", note: str = ""
) -> tuple[int, int]:
    """The side the maps of a token grid ``grid`` are average-pooled to: ``attn_res``; ``None``, the host's default,
    pools a square grid whose side is a multiple of 16 to 16x16 (Attend-and-Excite's read side: a 1024 px SD3,
    PixArt or Flux image's 64x64 grid, a 512 px one's 32x32) and keeps any other grid as it is.

    Raises:
        ValueError: ``attn_res`` that does not pool the grid exactly (a divisor of a square grid); the message names
            the grid as ``name`` (followed by ``note``).
    """
    if attn_res is None:
        side = DEFAULT_READ_SIDE
        return (side, side) if grid[0] == grid[1] and grid[0] % side == 0 else tuple(grid)
    f = grid[0] // attn_res if grid[0] % attn_res == 0 else 0
    if not f or grid[1] % f or grid[1] // f != attn_res:
        raise ValueError(
            f"attn_res={attn_res}: {name} is {grid[0]}x{grid[1]}{note}; attn_res must be a side it average-pools to "
            "exactly (a divisor of a square grid), or None for the host's default (16x16 where the grid pools to it, "
            "else the grid itself)"
        )
    return attn_res, attn_res


def token_grid_res(transformer, z, attn_res: int | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(grid, res)`` of a patch transformer's image tokens for latents ``z``: the token grid, and the side the
    maps are average-pooled to (:func:`pooled_res`).

    Raises:
        ValueError: ``attn_res`` that does not pool the grid exactly (a divisor of a square grid).
    """
    patch = transformer.config.patch_size
    grid = (z.shape[-2] // patch, z.shape[-1] // patch)
    return grid, pooled_res(grid, attn_res)


def first_half(num_blocks: int) -> list[int]:
    """Blocks ``0 .. ceil(num_blocks / 2) - 1`` (PixArt's default read blocks)."""
    return list(range((num_blocks + 1) // 2))


def quarter_depth(num_blocks: int) -> list[int]:
    """The block at a quarter of the depth, ``[num_blocks // 4]`` (the MM-DiT hosts' default read block)."""
    return [num_blocks // 4]
