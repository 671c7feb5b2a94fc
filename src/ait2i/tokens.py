"""A prompt's tokens as the text encoder sees them, with the prompt words they are pieces of: the table of
``ait2i tokens`` and of the demo, and the index ``--subjects``/``token_indices`` expect.
"""

from __future__ import annotations

from .subjects import prompt_tokens


def token_table(tokenizer, prompt: str) -> list[tuple[int, str, str]]:
    """``(index, token, word)`` for each token the text encoder sees, start and end tokens included.

    ``word`` is the prompt word the token is a piece of (CLIP splits "surfboard" into "surf" + "board"), or
    ``"<start>"`` / ``"<end>"``. The index is what ``--subjects`` and ``token_indices`` expect.
    """
    toks = prompt_tokens(tokenizer, prompt)
    added = set(tokenizer.get_added_vocab()) if hasattr(tokenizer, "get_added_vocab") else set()
    rows: list[tuple[int, str, str]] = []
    last = len(toks) - 1
    pending: list[tuple[int, str]] = []

    def flush():
        word = "".join(t.removesuffix("</w>") for _, t in pending)
        rows.extend((i, t.removesuffix("</w>"), word) for i, t in pending)
        pending.clear()

    for i, tok in toks:
        if i == 0 or i == last:
            flush()
            rows.append((i, tok, "<start>" if i == 0 else "<end>"))
            continue
        pending.append((i, tok))
        if tok.endswith("</w>") or tok in added:
            flush()
    flush()
    return sorted(rows)


def format_token_table(tokenizer, prompt: str) -> str:
    """The table of ``ait2i tokens``: :func:`token_table` with a hint on passing subjects, and a warning when the
    prompt is longer than the text encoder reads."""
    rows = token_table(tokenizer, prompt)
    width = max(len(t) for _, t, _ in rows)
    lines = [f"{'index':>5}  {'token':<{width}}  word"]
    lines += [f"{i:>5}  {t:<{width}}  {w}" for i, t, w in rows]
    words = [(i, t, w) for i, t, w in rows if w not in ("<start>", "<end>")]
    if words:
        word = words[-1][2]
        last = []
        for i, _, w in reversed(words):  # the pieces of the prompt's last word
            if w != word:
                break
            last.insert(0, str(i))
        lines.append(
            f'\nPass subjects as words of the prompt, e.g. --subjects "{word}" (an adjective before the noun binds '
            f'to it: --subjects "red car"; a repeated word: "cat#2"), or as token indices, e.g. '
            f"--subjects {','.join(last)}."
        )
    full = tokenizer(prompt, truncation=False).input_ids
    if len(full) > len(rows):
        lines.append(
            f"warning: the prompt has {len(full)} tokens; the text encoder reads only the first "
            f"{tokenizer.model_max_length} (the rest is cut off)."
        )
    return "\n".join(lines)
