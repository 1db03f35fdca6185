"""A CLIP-format byte-level BPE tokenizer learned on the toy world's words.

The files are exactly what `transformers.CLIPTokenizer.from_pretrained(folder)` reads for a real Stable
Diffusion model (vocab.json + merges.txt + tokenizer_config.json), built the way OpenAI's CLIP vocabulary is:
256 byte symbols, the same 256 with the end-of-word marker "</w>", one entry per merge, then
<|startoftext|> and <|endoftext|>. Merges are learned here (plain BPE: merge the most frequent adjacent pair
until every world word is one symbol), so each world word is one token, while any other text still encodes
through the byte symbols. A few hundred merged tokens instead of CLIP's 49k keep the text encoder's embedding
table small.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from backend.models.toyworld.world import vocabulary

END_OF_WORD = "</w>"
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77  # SD's context length: prompts are padded to it and every method's token indices assume it


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes)))


def _symbols(word: str) -> tuple[str, ...]:
    table = bytes_to_unicode()
    chars = [table[b] for b in word.encode("utf-8")]
    return (*chars[:-1], chars[-1] + END_OF_WORD)


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """BPE merges, most frequent adjacent pair first (ties: alphabetical), until each word is one symbol."""
    spelled = {word: _symbols(word) for word in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(pair for symbols in spelled.values() for pair in zip(symbols, symbols[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        spelled = {word: _merge(symbols, best) for word, symbols in spelled.items()}


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged, index = [], 0
    while index < len(symbols):
        if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == pair:
            merged.append(symbols[index] + symbols[index + 1])
            index += 2
        else:
            merged.append(symbols[index])
            index += 1
    return tuple(merged)


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id in CLIP's order: bytes, bytes + "</w>", merges, start, end."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + END_OF_WORD for symbol in symbols]
    tokens += ["".join(pair) for pair in merges]
    tokens += [START_TOKEN, END_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def write_tokenizer_files(folder: str | Path, words: Iterable[str] | None = None) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json for `words` (default: the world's vocabulary)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(vocabulary() if words is None else words)
    (folder / "vocab.json").write_text(json.dumps(build_vocab(merges), ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": START_TOKEN,
        "eos_token": END_TOKEN,
        "unk_token": END_TOKEN,
        "pad_token": END_TOKEN,  # as SD 1.x pads: the text encoder sees end tokens after the prompt
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def load_tokenizer(folder: str | Path):
    """The CLIPTokenizer for the files in `folder` (written by `write_tokenizer_files`)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))
