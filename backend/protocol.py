"""The GUI <-> backend protocol: plain dataclasses, no torch.

Everything the worker needs to reproduce a result travels in one `EditRequest`; everything a job reports comes
back as one `Event` type. Both have `to_dict` / `from_dict` producing JSON-safe dicts (images as PNG base64), so
a request doubles as the *recipe* stored in history entries, .ora projects and PNG metadata.
"""

from __future__ import annotations

import base64
import io
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

PROTOCOL_VERSION = 1
DEFAULT_MODEL = "toyworld"  # Atelier's own trained model, shipped in resources/models (backend.models.registry)

EventKind = Literal["started", "progress", "preview", "log", "result", "error", "cancelled"]
EVENT_KINDS: tuple[str, ...] = ("started", "progress", "preview", "log", "result", "error", "cancelled")
TERMINAL_KINDS: frozenset[str] = frozenset({"result", "error", "cancelled"})

ParamType = Literal["int", "float", "bool", "choice", "str"]


# --- images ------------------------------------------------------------------------------------------------


def encode_array(array: np.ndarray | None) -> dict | None:
    """uint8 HxW or HxWxC array -> {"png": base64}; lossless, JSON-safe."""
    if array is None:
        return None
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return {"png": base64.b64encode(buffer.getvalue()).decode("ascii")}


def decode_array(data: dict | None) -> np.ndarray | None:
    if data is None:
        return None
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data["png"]))))


def _arrays_equal(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


# --- parameters --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpec:
    """One method parameter: the GUI builds its form from these and the CLI its flags."""

    name: str
    type: ParamType
    default: Any
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    label: str = ""
    slider: bool = False  # a float with both bounds: the GUI shows a slider beside the number

    def validate(self, value: Any) -> Any:
        """Coerce `value` to this parameter's type or raise ValueError naming the parameter."""
        try:
            coerced = self._coerce(value)
        except (TypeError, ValueError):
            raise ValueError(f"parameter '{self.name}' expects {self.type}, got {value!r}") from None
        if self.type in ("int", "float"):
            if self.minimum is not None and coerced < self.minimum:
                raise ValueError(f"parameter '{self.name}' = {coerced} is below its minimum {self.minimum}")
            if self.maximum is not None and coerced > self.maximum:
                raise ValueError(f"parameter '{self.name}' = {coerced} is above its maximum {self.maximum}")
        if self.type == "choice" and coerced not in self.choices:
            raise ValueError(f"parameter '{self.name}' must be one of {', '.join(self.choices)}; got {coerced!r}")
        return coerced

    def _coerce(self, value: Any) -> Any:
        if self.type == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if self.type == "float":
            if isinstance(value, bool):
                raise ValueError
            result = float(value)
            if result != result:  # NaN
                raise ValueError
            return result
        if self.type == "bool":
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError
        return str(value)

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["choices"] = list(self.choices)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ParamSpec:
        return cls(**{**data, "choices": tuple(data.get("choices", ()))})


def validate_params(specs: list[ParamSpec] | tuple[ParamSpec, ...], params: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in, every value checked; unknown names are an error (a typo must not pass silently)."""
    by_name = {spec.name: spec for spec in specs}
    unknown = sorted(set(params) - set(by_name))
    if unknown:
        known = ", ".join(by_name) or "none"
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; this method takes: {known}")
    return {name: spec.validate(params[name]) if name in params else spec.default for name, spec in by_name.items()}


# --- method descriptions -----------------------------------------------------------------------------------

# Inputs a method can declare. Mask roles are written "mask:<role>", e.g. "mask:object", "mask:keep".
INPUT_KINDS = ("image", "points", "move", "reference", "source_prompt", "target_prompt", "object_prompts")


@dataclass(frozen=True)
class MethodInfo:
    """What the GUI and CLI know about a method without importing torch."""

    id: str
    title: str
    description: str
    families: tuple[str, ...]
    inputs: tuple[str, ...]
    params: tuple[ParamSpec, ...]
    optional_inputs: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "families": list(self.families),
            "inputs": list(self.inputs),
            "optional_inputs": list(self.optional_inputs),
            "params": [p.to_dict() for p in self.params],
        }

    @classmethod
    def from_dict(cls, data: dict) -> MethodInfo:
        return cls(
            id=data["id"],
            title=data["title"],
            description=data["description"],
            families=tuple(data["families"]),
            inputs=tuple(data["inputs"]),
            optional_inputs=tuple(data.get("optional_inputs", ())),
            params=tuple(ParamSpec.from_dict(p) for p in data["params"]),
        )


# --- requests ----------------------------------------------------------------------------------------------


@dataclass
class PointPair:
    """A drag: handle point (where the content is) -> target point (where it should go), in image pixels."""

    handle: tuple[float, float]
    target: tuple[float, float]

    def to_dict(self) -> dict:
        return {"handle": list(self.handle), "target": list(self.target)}

    @classmethod
    def from_dict(cls, data: dict) -> PointPair:
        return cls(handle=tuple(data["handle"]), target=tuple(data["target"]))


@dataclass
class ObjectPrompt:
    """One object of a multi-object edit: its mask, the word naming it now, and the prompt it should become."""

    mask: np.ndarray
    prompt: str
    source: str = ""

    def to_dict(self) -> dict:
        return {"mask": encode_array(self.mask), "prompt": self.prompt, "source": self.source}

    @classmethod
    def from_dict(cls, data: dict) -> ObjectPrompt:
        return cls(mask=decode_array(data["mask"]), prompt=data["prompt"], source=data.get("source", ""))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ObjectPrompt)
            and _arrays_equal(self.mask, other.mask)
            and (self.prompt, self.source) == (other.prompt, other.source)
        )


@dataclass
class EditRequest:
    """Everything needed to run — and later reproduce — one edit."""

    method: str
    image: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    points: list[PointPair] = field(default_factory=list)
    reference_image: np.ndarray | None = None
    reference_mask: np.ndarray | None = None
    # Where the user placed the reference on the image: (x, y) of its top-left corner in image pixels and the scale
    # from reference pixels to image pixels (paste and appearance-transfer methods put it there); None = not placed.
    reference_placement: tuple[float, float, float] | None = None
    # A region move (DragonDiffusion move / resize): (dx, dy) in image pixels and a scale about the region's centre;
    # the region is the request's "object" mask. None = no move.
    move: tuple[float, float, float] | None = None
    source_prompt: str = ""
    target_prompt: str = ""
    negative_prompt: str = ""
    object_prompts: list[ObjectPrompt] = field(default_factory=list)
    seed: int = 0
    model: str = DEFAULT_MODEL
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def to_dict(self) -> dict:
        return {
            "protocol": PROTOCOL_VERSION,
            "method": self.method,
            "image": encode_array(self.image),
            "params": dict(self.params),
            "masks": {role: encode_array(mask) for role, mask in self.masks.items()},
            "points": [p.to_dict() for p in self.points],
            "reference_image": encode_array(self.reference_image),
            "reference_mask": encode_array(self.reference_mask),
            "reference_placement": None if self.reference_placement is None else list(self.reference_placement),
            "move": None if self.move is None else list(self.move),
            "source_prompt": self.source_prompt,
            "target_prompt": self.target_prompt,
            "negative_prompt": self.negative_prompt,
            "object_prompts": [o.to_dict() for o in self.object_prompts],
            "seed": self.seed,
            "model": self.model,
            "job_id": self.job_id,
        }

    @classmethod
    def from_dict(cls, data: dict) -> EditRequest:
        version = data.get("protocol", PROTOCOL_VERSION)
        if version > PROTOCOL_VERSION:
            raise ValueError(f"recipe was written by a newer Atelier (protocol {version} > {PROTOCOL_VERSION})")
        return cls(
            method=data["method"],
            image=decode_array(data.get("image")),
            params=dict(data.get("params", {})),
            masks={role: decode_array(mask) for role, mask in data.get("masks", {}).items()},
            points=[PointPair.from_dict(p) for p in data.get("points", [])],
            reference_image=decode_array(data.get("reference_image")),
            reference_mask=decode_array(data.get("reference_mask")),
            reference_placement=_triple(data.get("reference_placement")),
            move=_triple(data.get("move")),
            source_prompt=data.get("source_prompt", ""),
            target_prompt=data.get("target_prompt", ""),
            negative_prompt=data.get("negative_prompt", ""),
            object_prompts=[ObjectPrompt.from_dict(o) for o in data.get("object_prompts", [])],
            seed=int(data.get("seed", 0)),
            model=data.get("model", DEFAULT_MODEL),
            job_id=data.get("job_id") or uuid.uuid4().hex[:12],
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EditRequest):
            return NotImplemented
        return self.to_dict() == other.to_dict()


def _triple(value: Any) -> tuple[float, float, float] | None:
    if value is None:
        return None
    x, y, scale = (float(v) for v in value)
    return (x, y, scale)


@dataclass
class Query:
    """A question for the worker that is not an edit: `methods` (list MethodInfo dicts) or `models`."""

    what: Literal["methods", "models", "ping", "segment"]
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    args: dict[str, Any] = field(default_factory=dict)


def a1111_parameters(metadata: dict[str, Any]) -> str:
    """The A1111-style `parameters` text: prompt / negative prompt / settings (line 1 prompt, line 2 negative
    prompt, line 3 settings), read by many tools; written into PNGs by both the CLI and the GUI."""
    recipe = metadata.get("recipe") or {}
    params = recipe.get("params", {})
    prompt = recipe.get("target_prompt") or recipe.get("source_prompt") or ""
    settings = [
        f"Steps: {params['steps']}" if "steps" in params else None,
        f"Sampler: {metadata.get('method_title', metadata.get('method', recipe.get('method', '')))}",
        f"CFG scale: {params['guidance']}" if "guidance" in params else None,
        f"Seed: {recipe.get('seed', 0)}",
        f"Size: {metadata.get('width', '?')}x{metadata.get('height', '?')}",
        f"Model: {metadata.get('model', recipe.get('model', ''))}",
    ]
    return "\n".join(
        [prompt, f"Negative prompt: {recipe.get('negative_prompt', '')}", ", ".join(s for s in settings if s)]
    )


# --- events ------------------------------------------------------------------------------------------------


@dataclass
class Event:
    """The one thing a job reports. `kind` says which fields matter:

    started: message (method title) · progress: step, total, stage · preview: step, total, image ·
    log: message · result: image, metadata · error: error_kind, message, hint · cancelled: step
    """

    kind: EventKind
    job_id: str
    step: int = 0
    total: int = 0
    stage: str = ""
    image: np.ndarray | None = None
    message: str = ""
    error_kind: str = ""
    hint: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}; expected one of {', '.join(EVENT_KINDS)}")

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["image"] = encode_array(self.image)
        data["metadata"] = dict(self.metadata)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Event:
        return cls(**{**data, "image": decode_array(data.get("image")), "metadata": dict(data.get("metadata", {}))})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return self.to_dict() == other.to_dict()


# --- insight: why a result looks as it does ----------------------------------------------------------------

INSIGHT_KEY = "insight"
"""metadata[INSIGHT_KEY] of a result, for the staging pane only (see `check_insight`)."""


def check_insight(insight: dict[str, Any]) -> dict[str, Any]:
    """A result's insight, checked and normalised; ValueError names what is wrong. Every part is optional:

    attention: {"tokens": [str, ...], "maps": uint8 (K, h, w)}, one heat map per token at any resolution
      (other number types are scaled so each map's peak is 255);
    correspondences: {"source": (N, 2) x, y in the input's pixels, "target": (N, 2) x, y in the result's pixels,
      "score": (N,) in [0, 1]} as float32; rows with a non-finite number are dropped;
    note: one line saying what is shown.

    Insight can be large and only explains a result, so it is never stored with it (`without_insight`).
    """
    if not isinstance(insight, dict):
        raise ValueError(f"insight must be a dict, got {type(insight).__name__}")
    unknown = sorted(set(insight) - {"attention", "correspondences", "note"})
    if unknown:
        raise ValueError(f"unknown insight part(s) {', '.join(unknown)}; expected attention, correspondences, note")
    checked: dict[str, Any] = {}
    if insight.get("attention") is not None:
        checked["attention"] = _check_attention(insight["attention"])
    if insight.get("correspondences") is not None:
        checked["correspondences"] = _check_correspondences(insight["correspondences"])
    if insight.get("note"):
        checked["note"] = str(insight["note"]).splitlines()[0]
    return checked


def without_insight(metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata to store with a result (history, .ora, PNG): everything but its insight."""
    return {key: value for key, value in metadata.items() if key != INSIGHT_KEY}


def _check_attention(attention: dict[str, Any]) -> dict[str, Any]:
    tokens = [str(token) for token in attention.get("tokens", ())]
    maps = np.asarray(attention.get("maps"))
    if maps.ndim == 2 and len(tokens) == 1:
        maps = maps[None]
    if maps.ndim != 3 or maps.shape[0] != len(tokens) or maps.shape[0] == 0 or min(maps.shape[1:]) < 1:
        raise ValueError(f"attention maps must be (tokens={len(tokens)}, h, w) with tokens > 0, got {maps.shape}")
    if maps.dtype != np.uint8:
        if not np.issubdtype(maps.dtype, np.number):
            raise ValueError(f"attention maps must be numbers, got {maps.dtype}")
        values = np.nan_to_num(maps.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)
        peaks = values.max(axis=(1, 2), keepdims=True)
        maps = np.round(255.0 * values / np.where(peaks > 0, peaks, 1.0)).astype(np.uint8)
    return {"tokens": tokens, "maps": np.ascontiguousarray(maps)}


def _check_correspondences(matches: dict[str, Any]) -> dict[str, Any]:
    source = np.asarray(matches.get("source"), np.float32).reshape(-1, 2)
    target = np.asarray(matches.get("target"), np.float32).reshape(-1, 2)
    if len(source) != len(target):
        raise ValueError(f"correspondences need as many source as target points, got {len(source)} and {len(target)}")
    keep = np.isfinite(source).all(axis=1) & np.isfinite(target).all(axis=1)
    checked = {"source": source[keep], "target": target[keep]}
    if matches.get("score") is not None:
        score = np.asarray(matches["score"], np.float32).reshape(-1)
        if len(score) != len(source):
            raise ValueError(f"correspondences have {len(source)} points but {len(score)} scores")
        checked["score"] = np.nan_to_num(score[keep], nan=0.0).clip(0.0, 1.0)
    return checked
