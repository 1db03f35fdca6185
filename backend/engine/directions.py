"""pix2pix-zero edit directions (Parmar et al., SIGGRAPH 2023, Sec. 3.1; card: shared/METHODS.md section 4, step 4).

An edit "cat -> dog" needs no prompt: it is a direction in the text encoder's output space,

    delta_c = mean over a target sentence bank of E(s) - mean over a source bank of E(s),

E(s) the full (77, D) hidden states the UNet is conditioned on. Adding s * delta_c to the caption's embedding moves
whatever the sentences have in common with the word, and averaging hundreds of sentences cancels what they do not.

Banks come from templates shipped in resources/edit_directions/templates.json (the official code used 1000+
GPT-3 sentences per word; its demo also offers ~2000 template sentences): a word takes the {word} slot of everyday
templates ("a {adjective} {word} {activity} {place}"), or in the toy world the slot of its kind (a colour word the
colour slot); every other slot is drawn from its list. The source
and target banks are drawn with the same draws, so sentence i of one differs from sentence i of the other only in
the word. Users may give their own bank files instead: text (one sentence per line) or a torch file holding
embeddings (N or 1, 77, D), e.g. the official `assets/embeddings_sd_1.4/cat.pt`.

Bank means are cached per model, in memory and on disk under the user's cache folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from backend.engine.conditioning import check_prompt, encode_prompts
from backend.errors import InputError
from backend.models.bundle import ModelBundle
from backend.paths import resource_path, user_cache_dir

BANK_SIZE = 400  # sentences per generated bank ("hundreds per word")
BANK_SEED = 0
_BATCH = 64
_MEMORY_KEY = "edit_direction_means"


@dataclass(frozen=True)
class TemplateSet:
    name: str
    templates: tuple[str, ...]
    slots: dict[str, tuple[str, ...]]

    def slot_for(self, word: str) -> str:
        """The slot a word fills: {word} in sets that have it (everyday English: the word is the subject), else the
        slot whose list holds it (the toy world: a colour word the colour slot)."""
        if any("word" in _fields(template) for template in self.templates):
            return "word"
        for slot, values in self.slots.items():
            if word in values:
                return slot
        return "word"

    def size(self) -> int:
        """How many different sentences the set can make for one word (at most)."""
        return sum(math.prod(len(self.slots[s]) for s in _fields(t) if s in self.slots) for t in self.templates)


def _fields(template: str) -> list[str]:
    return re.findall(r"{(\w+)}", template)


@lru_cache(maxsize=1)
def template_sets() -> dict[str, TemplateSet]:
    data = json.loads(resource_path("edit_directions", "templates.json").read_text(encoding="utf-8"))
    return {
        name: TemplateSet(name, tuple(entry["templates"]), {k: tuple(v) for k, v in entry["slots"].items()})
        for name, entry in data["sets"].items()
    }


def template_set_for(bundle: ModelBundle) -> str:
    """The toy-world model reads only its world's words; every real CLIP encoder reads everyday English."""
    from backend.models.registry import TOYWORLD

    return "toyworld" if bundle.model_id == TOYWORLD else "general"


def sentence_bank(word: str, set_name: str = "general", count: int = BANK_SIZE, seed: int = BANK_SEED) -> list[str]:
    """`count` sentences about `word` from a template set; the same (set, count, seed) gives every word the same
    draws, so two words' banks pair up sentence by sentence."""
    word = " ".join(word.split())
    if not word:
        raise InputError("an edit word is empty", hint="Type the word to change from and the word to change to.")
    sets = template_sets()
    if set_name not in sets:
        raise InputError(f"unknown sentence template set {set_name!r}", hint=f"Known sets: {', '.join(sets)}.")
    template_set = sets[set_name]
    slot = template_set.slot_for(word)
    usable = [t for t in template_set.templates if slot in _fields(t)]
    if not usable:
        known = sorted({value for values in template_set.slots.values() for value in values if " " not in value})
        raise InputError(
            f"no sentence template of set {set_name!r} has a place for {word!r}",
            hint=f"Words this set knows: {', '.join(v for v in known if v)[:300]}",
        )
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(count):
        # Draw everything, the word's own slot included, so every word consumes the same random numbers; a slot
        # used twice in a template ({other} ... {other}) takes a fresh value each time.
        template = template_set.templates[int(rng.integers(len(template_set.templates)))]
        values = {name: [str(v) for v in rng.choice(options, size=3)] for name, options in template_set.slots.items()}
        if slot not in _fields(template):
            template = usable[int(rng.integers(len(usable)))]
        values[slot] = [word, *values.get(slot, [word, word])[1:]]
        sentences.append(_realise(template, values))
    return sentences


def _realise(template: str, values: dict[str, list[str]]) -> str:
    """The template with its k-th use of a slot filled by that slot's k-th value, spaces tidied."""
    used: dict[str, int] = {}

    def fill(match: re.Match) -> str:
        name = match.group(1)
        used[name] = used.get(name, -1) + 1
        return values[name][used[name]]

    return " ".join(re.sub(r"{(\w+)}", fill, template).split())


def read_bank_file(path: str | Path) -> list[str] | torch.Tensor:
    """A user's bank: sentences from a text file (one per line, '#' lines and blank lines skipped), or embeddings
    from a torch file (.pt / .pth / .bin)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"sentence bank file not found: {file}", hint="Give a text file with one sentence per line.")
    if file.suffix.lower() in (".pt", ".pth", ".bin"):
        try:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file is the user's input error
            raise InputError(f"could not read embeddings from {file}: {error}") from None
        if not isinstance(loaded, torch.Tensor):
            raise InputError(f"{file} holds a {type(loaded).__name__}, not an embedding tensor (N, 77, D)")
        return loaded
    lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
    sentences = [" ".join(line.split()) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not sentences:
        raise InputError(f"sentence bank {file} has no sentences", hint="Write one sentence per line.")
    return sentences


def bank_mean(bundle: ModelBundle, bank: list[str] | torch.Tensor, word: str | None = None) -> torch.Tensor:
    """Mean (1, 77, D) text-encoder hidden states of a bank, on the model's device and dtype. With `word`, the
    mean *word profile* instead: row j averages each sentence's hidden state j tokens after the word's first
    token (rows no sentence reaches are 0), so it can be laid down wherever the word sits in a caption."""
    if isinstance(bank, torch.Tensor):
        if word is not None:
            raise InputError(
                "an aligned edit direction needs sentences, not embeddings",
                hint="Give text bank files, or choose the paper's direction.",
            )
        return _embedding_mean(bundle, bank)
    cache = bundle.extra.setdefault(_MEMORY_KEY, {})
    key = _bank_key(bundle, bank, word)
    if key not in cache:
        cache[key] = _disk_cached(bundle, key, bank, word)
    return cache[key].to(bundle.device, bundle.dtype)


def _embedding_mean(bundle: ModelBundle, embeddings: torch.Tensor) -> torch.Tensor:
    values = embeddings.float()
    if values.ndim == 2:
        values = values[None]
    width = bundle.text_encoders[0].config.hidden_size if bundle.family != "sdxl" else None
    if values.ndim != 3 or values.shape[1] != bundle.max_tokens or (width and values.shape[2] != width):
        raise InputError(
            f"bank embeddings are shaped {tuple(embeddings.shape)}; this model needs (N, {bundle.max_tokens}, {width})",
            hint="Use embeddings made with this model's text encoder, or a text file of sentences.",
        )
    return values.mean(0, keepdim=True).to(bundle.device, bundle.dtype)


def _bank_key(bundle: ModelBundle, sentences: list[str], word: str | None = None) -> str:
    text = json.dumps({"model": bundle.model_id, "source": bundle.source, "sentences": sentences, "word": word})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _disk_cached(bundle: ModelBundle, key: str, sentences: list[str], word: str | None) -> torch.Tensor:
    file = user_cache_dir() / "edit_directions" / f"{key}.pt"
    if file.is_file():
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
            pass
    mean = _encode_mean(bundle, sentences, word).cpu()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_suffix(".tmp")
        torch.save(mean, partial)
        partial.replace(file)
    except OSError:  # a read-only cache folder only costs the next run the encoding
        pass
    return mean


@torch.no_grad()
def _encode_mean(bundle: ModelBundle, sentences: list[str], word: str | None = None) -> torch.Tensor:
    for number, sentence in enumerate(sentences, 1):
        check_prompt(bundle, sentence, f"sentence {number} of the bank ({sentence[:40]!r})")
    starts = [_first_start(bundle, sentence, word) for sentence in sentences] if word is not None else None
    total, counts = None, torch.zeros(bundle.max_tokens, 1)
    for first in range(0, len(sentences), _BATCH):
        hidden = encode_prompts(bundle, sentences[first : first + _BATCH]).hidden.float().cpu()
        if starts is not None:  # shift each sentence so its word's first token is row 0
            shifted = torch.zeros_like(hidden)
            for row, start in enumerate(starts[first : first + _BATCH]):
                shifted[row, : hidden.shape[1] - start] = hidden[row, start:]
                counts[: hidden.shape[1] - start] += 1
            hidden = shifted
        summed = hidden.sum(0, keepdim=True)
        total = summed if total is None else total + summed
    return total / len(sentences) if starts is None else total / counts.clamp(min=1)


def word_starts(bundle: ModelBundle, text: str, word: str) -> list[int]:
    """Token positions (start token = 0) where each occurrence of `word` begins in `text`."""
    tokenizer = bundle.tokenizers[0]
    ids = tokenizer(text).input_ids
    word_ids = tokenizer(word, add_special_tokens=False).input_ids
    if not word_ids:
        return []
    return [i for i in range(1, len(ids) - len(word_ids) + 1) if ids[i : i + len(word_ids)] == word_ids]


def _first_start(bundle: ModelBundle, sentence: str, word: str) -> int:
    starts = word_starts(bundle, sentence, word)
    if not starts:
        raise InputError(
            f"the bank sentence {sentence[:60]!r} does not contain {word!r}",
            hint="An aligned direction lays each sentence down at its word: every sentence must say it.",
        )
    return starts[0]


def place_profile(profile: torch.Tensor, starts: list[int]) -> torch.Tensor:
    """A (1, 77, D) direction: the word profile laid down from each start on (summed where they overlap)."""
    delta = torch.zeros_like(profile)
    length = profile.shape[1]
    for start in starts:
        delta[:, start:] += profile[:, : length - start]
    return delta


@dataclass
class EditDirection:
    """delta_c (1, 77, D) and where it came from (for the result's metadata)."""

    delta: torch.Tensor
    source: str
    target: str
    sentences: tuple[int, int]  # bank sizes (0 = given as embeddings)


def edit_direction(
    bundle: ModelBundle,
    source_word: str,
    target_word: str,
    source_bank: str = "",
    target_bank: str = "",
    count: int = BANK_SIZE,
    caption: str | None = None,
) -> EditDirection:
    """delta_c = mean(target bank) - mean(source bank); a bank file, when given, replaces the word's templates.

    With `caption` (the "aligned" direction, an Atelier option): the difference of the banks' word profiles, laid
    down where the source word sits in the caption. The paper's mean spreads the difference over the positions the
    word takes in the bank's sentences, which need not be where it is in the caption."""
    set_name = template_set_for(bundle)
    banks = []
    for word, file, role in ((source_word, source_bank, "source"), (target_word, target_bank, "target")):
        if file.strip():
            banks.append(read_bank_file(file.strip()))
        elif word.strip():
            banks.append(sentence_bank(word, set_name, count))
        else:
            raise InputError(
                f"the edit needs a {role} word or a {role} bank file", hint="e.g. source word 'cat', target word 'dog'"
            )
    source_sentences, target_sentences = banks
    if not isinstance(source_sentences, torch.Tensor) and source_sentences == target_sentences:
        raise InputError("the source and target banks are the same: the edit direction would be zero")
    sizes = tuple(0 if isinstance(b, torch.Tensor) else len(b) for b in banks)
    if caption is None:
        delta = bank_mean(bundle, target_sentences) - bank_mean(bundle, source_sentences)
        return EditDirection(delta, source_word or source_bank, target_word or target_bank, sizes)
    for word, role in ((source_word, "source"), (target_word, "target")):
        if not word.strip():
            raise InputError(f"an aligned edit direction needs the {role} word (it finds the word in each sentence)")
    starts = word_starts(bundle, caption, source_word.strip())
    if not starts:
        raise InputError(
            f"the caption {caption!r} does not contain {source_word!r}; an aligned direction edits where the word is",
            hint="Type a source prompt that names it, or choose the paper's direction.",
        )
    profile = bank_mean(bundle, target_sentences, target_word.strip()) - bank_mean(
        bundle, source_sentences, source_word.strip()
    )
    return EditDirection(place_profile(profile, starts), source_word, target_word, sizes)
