"""The synthetic avatar world: cartoon talking heads whose every parameter is known.

A clip is a head-and-shoulders avatar on a flat background (numpy only, 64x64 up to 256x256), driven by
16 kHz audio (the built-in speech-like generator or any real recording) and by text instructions. Its ground
truth is exact: mouth opening per frame is the audio's loudness envelope (silence closes the mouth), the
eyebrows rise on loudness peaks, and head yaw/pitch, hand heights, waving and gaze follow the instructions.
Region masks (eyes, mouth, hair, jaw, hands) come with every frame. `write_clip_dataset` writes the clip
dataset format of real data: mp4s with the audio muxed in plus `metadata.jsonl`.

Conventions:
- World units: 1 = the shorter image side; (0, 0) is the top-left of the centred square; y grows downwards.
  Every geometry constant below is in these units, so the analyzers in `evaluation/synthetic.py` read any
  resolution with the same numbers.
- Left/right are the avatar's own: "raise the right hand" lifts the hand on the image's left side, "turn the
  head to the left" and "look to the left" move the face and the irises towards the image's right.
- Splits. Identities: an identity is held out when the CRC32 of its categorical combination (background,
  skin, hair colour, hair style, shirt, eye colour and face shape names) is 0 mod `HELDOUT_IDENTITY_BUCKETS`;
  `sample_identity(seed, split)` draws until the split matches, so a training identity never shares the full
  combination of a held-out one (every single attribute value is seen in training; the combinations are new).
  Audio and motion: random streams keyed on the split, so held-out speech is never generated for training.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from ..regions import REGION_NAMES

SAMPLE_RATE = 16000
SPLITS = ("train", "heldout")
TWIN_SUFFIX = "_twin"  # a side twin's clip name: the clip's name + this
MOTION_KEYS = ("mouth", "brow", "yaw", "pitch", "gaze_x", "gaze_y", "raise_left", "raise_right", "wave_left",
               "wave_right")
HELDOUT_IDENTITY_BUCKETS = 8

# ----------------------------------------------------------------------------------------------------------
# Palettes (RGB). Identity colours get a small jitter; the names go into captions.
BACKGROUNDS = {
    "green": (96, 186, 88), "teal": (22, 112, 138), "blue": (52, 72, 214), "navy": (32, 46, 110),
    "purple": (112, 78, 178), "magenta": (150, 36, 136), "orange": (232, 140, 44), "lime": (178, 214, 40),
    "grey": (122, 124, 128), "red": (186, 48, 52), "pink": (232, 134, 176), "sky blue": (110, 170, 230),
}
SHIRTS = {**BACKGROUNDS, "black": (28, 28, 34), "brown": (128, 80, 40)}
HAIR_COLOURS = {
    "black": (34, 30, 30), "brown": (104, 66, 36), "blonde": (222, 190, 108), "red": (184, 70, 32),
    "grey": (150, 150, 152), "pink": (228, 92, 150), "blue": (44, 84, 200), "green": (40, 112, 52),
}
SKINS = {
    "pale": (244, 212, 186), "light": (236, 190, 156), "medium": (212, 160, 118), "tan": (190, 130, 88),
    "brown": (150, 100, 66), "dark": (112, 74, 52),
}
EYE_COLOURS = {
    "brown": (100, 58, 28), "dark": (46, 34, 30), "blue": (52, 104, 196), "green": (58, 140, 72),
    "grey": (108, 120, 138),
}
HAIR_STYLES = ("short", "long", "bun", "bob", "curly")
FACE_SHAPES = {"round": (0.215, 0.22), "oval": (0.2, 0.235), "long": (0.19, 0.25)}  # head radii (x, y)

# Fixed world colours (identities are drawn so that none of their colours is close to these).
MOUTH_COLOUR = (80, 12, 28)
EYE_WHITE = (246, 246, 246)
PUPIL_COLOUR = (16, 16, 20)
PEN_COLOUR = (246, 198, 18)
NOTEBOOK_COLOUR = (150, 250, 235)  # mint: far from every palette and from the eye white
MIN_COLOUR_DISTANCE = 60.0  # between an identity's own colours, and from the fixed colours of objects
MIN_MOUTH_DISTANCE = 40.0  # from the skin-to-mouth colour line: what the mouth analyzer reads as "mouth"

# ----------------------------------------------------------------------------------------------------------
# Geometry (world units). The head never moves sideways; turning shifts the facial features.
HEAD_CENTER = (0.5, 0.38)
NOD_HEAD_SHIFT = 0.025  # head moves down by pitch * this
NOD_FEATURE_SHIFT = 0.015  # features move down by a further pitch * this
YAW_FEATURE_SHIFT = 0.045  # features move by yaw * this (towards the image right for yaw > 0)
YAW_FRINGE_SHIFT = 0.025
EYE_OFFSET = (0.08, -0.02)  # from the head centre
EYE_RADII = (0.06, 0.046)
IRIS_RADIUS = 0.03
PUPIL_RADIUS = 0.013
GAZE_SHIFT = (0.03, 0.02)
BROW_OFFSET = -0.085  # from the eye centre
BROW_RAISE = 0.02
BROW_HALF_LENGTH = 0.04
BROW_RADIUS = 0.009
MOUTH_TOP = 0.075  # below the head centre; the mouth opens downwards like a dropping jaw
MOUTH_HALF_WIDTH = 0.085
MOUTH_CLOSED_HEIGHT = 0.02
MOUTH_OPEN_HEIGHT = 0.10  # extra height at opening 1
NECK_HALF_WIDTH = 0.06
BODY = (0.5, 1.1, 0.45, 0.3)  # shoulders: ellipse centre and radii
# Hands, keyed by the avatar's side: its right hand is on the image's left.
SHOULDER = {"right": (0.22, 0.95), "left": (0.78, 0.95)}
HAND_REST = {"right": (0.2, 1.15), "left": (0.8, 1.15)}  # below the frame: hidden
HAND_HOLD = {"right": (0.32, 0.87), "left": (0.68, 0.87)}  # in front of the chest, holding an object
HAND_RAISED = {"right": (0.13, 0.36), "left": (0.87, 0.36)}
HAND_RADIUS = 0.075
ARM_RADIUS = 0.045
WAVE_SHIFT = 0.045
NOTEBOOK_HALF_SIZE = (0.08, 0.1)
NOTEBOOK_OFFSET = (0.1, -0.02)  # from the hand, outwards: the hand holds its inner edge
PEN_TIP = (0.06, -0.17)  # from the hand, mirrored for the left hand
PEN_RADIUS = 0.016

# Timing.
RAMP_SECONDS = 0.25
NOD_HZ = 1.5
WAVE_HZ = 2.0
SILENCE_GATE = 0.1  # loudness below this fraction of the clip's reference level closes the mouth

# ----------------------------------------------------------------------------------------------------------
# Text: instruction name -> (imperative for the short prompt, third person for the caption).
INSTRUCTIONS = {
    "turn_head_left": ("turn the head to the left", "turns the head to the left"),
    "turn_head_right": ("turn the head to the right", "turns the head to the right"),
    "nod": ("nod", "nods"),
    "raise_right_hand": ("raise the right hand", "raises the right hand"),
    "raise_left_hand": ("raise the left hand", "raises the left hand"),
    "wave_right_hand": ("wave with the right hand", "waves with the right hand"),
    "wave_left_hand": ("wave with the left hand", "waves with the left hand"),
    "look_up": ("look up", "looks up"),
    "look_down": ("look down", "looks down"),
    "look_left": ("look to the left", "looks to the left"),
    "look_right": ("look to the right", "looks to the right"),
}
INSTRUCTION_GROUPS = (  # a clip combines at most one instruction of each group
    ("turn_head_left", "turn_head_right", "nod"),
    ("raise_right_hand", "raise_left_hand", "wave_right_hand", "wave_left_hand"),
    ("look_up", "look_down", "look_left", "look_right"),
)
IMPLIED_MOTIONS = {"wave_right_hand": ("raise_right_hand",), "wave_left_hand": ("raise_left_hand",)}
OBJECT_HANDS = {"pen": "right", "notebook": "left"}  # a held object persists in its hand all clip long
HAIR_PHRASES = {
    "short": "short {} hair", "long": "long {} hair", "bun": "{} hair in a bun", "bob": "a {} bob",
    "curly": "curly {} hair",
}


@dataclass(frozen=True)
class Identity:
    """One avatar's appearance: RGB colours (0-255) and the names used in captions."""

    seed: int
    background: tuple[int, int, int]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    shirt: tuple[int, int, int]
    eyes: tuple[int, int, int]
    background_name: str
    skin_name: str
    hair_name: str
    hair_style: str
    shirt_name: str
    eye_name: str
    face_shape: str

    @property
    def colours(self) -> dict[str, tuple[int, int, int]]:
        """The colours the analyzers estimate: background, skin, hair, shirt."""
        return {"background": self.background, "skin": self.skin, "hair": self.hair, "shirt": self.shirt}

    @property
    def split(self) -> str:
        key = "|".join((self.background_name, self.skin_name, self.hair_name, self.hair_style, self.shirt_name,
                        self.eye_name, self.face_shape))
        return "heldout" if zlib.crc32(key.encode()) % HELDOUT_IDENTITY_BUCKETS == 0 else "train"

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


@dataclass
class SyntheticClip:
    """A rendered clip and its ground truth.

    frames (F, H, W, 3) uint8; audio (N,) float32 at 16 kHz; masks: region -> (F, H, W) bool; motion: name ->
    (F,) float32 per-frame parameters (mouth, brow, yaw, pitch, gaze_x, gaze_y, raise_left/right,
    wave_left/right).
    """

    frames: np.ndarray
    audio: np.ndarray
    masks: dict[str, np.ndarray]
    motion: dict[str, np.ndarray]
    identity: Identity
    instructions: list[str]
    objects: list[str]
    fps: float
    seed: int

    @property
    def prompt(self) -> str:
        return short_prompt(self.instructions, self.objects)

    @property
    def caption(self) -> str:
        return full_caption(self.identity, self.instructions, self.objects)


def _rng(*key) -> np.random.Generator:
    """A generator keyed on ints and strings (splits and purposes get separate streams)."""
    return np.random.default_rng([zlib.crc32(str(part).encode()) if isinstance(part, str) else int(part)
                                  for part in key])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}; got {split!r}.")


# ----------------------------------------------------------------------------------------------------------
# Identity


def _distance(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def _distance_to_segment(colour, start, end) -> float:
    colour, start, end = (np.asarray(c, dtype=np.float64) for c in (colour, start, end))
    direction = end - start
    t = np.clip(np.dot(colour - start, direction) / np.dot(direction, direction), 0.0, 1.0)
    return float(np.linalg.norm(colour - start - t * direction))


def _is_distinct(bg, skin, hair, shirt, eyes) -> bool:
    """Whether the analyzers can tell every part of the avatar apart by colour."""
    own = [bg, skin, hair, shirt]
    pairs = [(a, b) for i, a in enumerate(own) for b in own[i + 1:]] + [(eyes, skin), (eyes, hair), (eyes, EYE_WHITE)]
    pairs += [(colour, fixed) for colour in own for fixed in (PEN_COLOUR, NOTEBOOK_COLOUR, EYE_WHITE)]
    return (all(_distance(a, b) >= MIN_COLOUR_DISTANCE for a, b in pairs)
            and all(_distance_to_segment(c, skin, MOUTH_COLOUR) >= MIN_MOUTH_DISTANCE for c in (bg, hair, eyes))
            and _distance(skin, MOUTH_COLOUR) >= MIN_COLOUR_DISTANCE)


def sample_identity(seed: int, split: str = "train") -> Identity:
    """Draws the identity of `seed` within `split` ("train" or "heldout"); deterministic."""
    _check_split(split)
    rng = _rng("identity", seed)
    while True:
        names = {
            "background_name": rng.choice(list(BACKGROUNDS)), "skin_name": rng.choice(list(SKINS)),
            "hair_name": rng.choice(list(HAIR_COLOURS)), "hair_style": rng.choice(HAIR_STYLES),
            "shirt_name": rng.choice(list(SHIRTS)), "eye_name": rng.choice(list(EYE_COLOURS)),
            "face_shape": rng.choice(list(FACE_SHAPES)),
        }
        names = {key: str(value) for key, value in names.items()}
        palettes = (BACKGROUNDS[names["background_name"]], SKINS[names["skin_name"]],
                    HAIR_COLOURS[names["hair_name"]], SHIRTS[names["shirt_name"]], EYE_COLOURS[names["eye_name"]])
        bg, skin, hair, shirt, eyes = (
            tuple(int(v) for v in np.clip(np.add(c, rng.integers(-8, 9, size=3)), 0, 255)) for c in palettes)
        identity = Identity(int(seed), bg, skin, hair, shirt, eyes, **names)
        if identity.split == split and _is_distinct(bg, skin, hair, shirt, eyes):
            return identity


# ----------------------------------------------------------------------------------------------------------
# Audio


def synthesize_speech(seconds: float, seed: int, split: str = "train", sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speech-like audio: voiced harmonics with formants, a pitch contour that falls over each phrase and rises
    on stressed syllables, syllables at ~4-6 Hz with loudness peaks, consonant bursts and pauses.

    Returns (round(seconds * sample_rate),) float32 in [-1, 1]. Train and held-out audio use separate streams.
    """
    _check_split(split)
    rng = _rng("audio", split, seed)
    num_samples = round(seconds * sample_rate)
    envelope, stress, f1, f2 = (np.zeros(num_samples) for _ in range(4))
    onsets = []
    base_pitch = rng.uniform(95, 230)
    t = rng.uniform(0.1, 0.35)
    while t < seconds:
        for _ in range(rng.integers(3, 10)):  # one phrase
            duration = rng.uniform(0.14, 0.28)
            start, stop = round(t * sample_rate), min(round((t + duration) * sample_rate), num_samples)
            if start >= num_samples:
                break
            stressed = rng.random() < 0.15
            phase = np.arange(stop - start) / (duration * sample_rate)
            envelope[start:stop] = (1.0 if stressed else rng.uniform(0.35, 0.75)) * np.sin(np.pi * phase) ** 1.5
            stress[start:stop] = stressed * np.sin(np.pi * phase)
            f1[start:stop], f2[start:stop] = rng.uniform(300, 800), rng.uniform(900, 2400)
            onsets.append(start)
            t += duration
        t += rng.uniform(0.25, 0.7)

    time = np.arange(num_samples) / sample_rate
    declination = 1.15 - 0.25 * (time % 2.0) / 2.0
    pitch = base_pitch * declination * (1 + 0.25 * stress) * (1 + 0.01 * np.sin(2 * np.pi * 5 * time))
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = np.zeros(num_samples)
    for k in range(1, int(4000 / base_pitch) + 1):
        formants = np.exp(-((k * pitch - f1) / 150) ** 2) + 0.6 * np.exp(-((k * pitch - f2) / 250) ** 2)
        voiced += (0.3 + formants) / k * np.sin(k * phase)
    bursts = np.zeros(num_samples)
    burst = np.exp(-np.arange(int(0.03 * sample_rate)) / (0.008 * sample_rate))
    for onset in onsets:
        stop = min(onset + burst.size, num_samples)
        bursts[onset:stop] += burst[: stop - onset]
    audio = envelope * voiced + 0.15 * bursts * rng.standard_normal(num_samples)
    audio = 0.8 * audio / max(np.abs(audio).max(), 1e-8) + 1e-3 * rng.standard_normal(num_samples)
    return audio.astype(np.float32)


def loudness_envelope(audio: np.ndarray, fps: float, num_frames: int | None = None,
                      sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The per-frame loudness the avatar's mouth follows, and the lip-sync reference of the benchmark.

    RMS of each frame's samples relative to the clip's 95th-percentile frame (at least -40 dBFS), gated so
    that silence and noise below `SILENCE_GATE` give 0. Returns (num_frames,) float32 in [0, 1]; num_frames
    defaults to round(duration * fps).
    """
    audio = np.asarray(audio, dtype=np.float64)
    if num_frames is None:
        num_frames = round(audio.size / sample_rate * fps)
    bounds = np.round(np.arange(num_frames + 1) * sample_rate / fps).astype(int)
    squares = np.concatenate([[0.0], np.cumsum(audio**2)])
    bounds = np.minimum(bounds, audio.size)
    counts = np.maximum(np.diff(bounds), 1)
    rms = np.sqrt((squares[bounds[1:]] - squares[bounds[:-1]]) / counts)
    reference = max(np.percentile(rms, 95) if rms.size else 0.0, 0.01)
    return np.clip((rms / reference - SILENCE_GATE) / (1 - SILENCE_GATE), 0, 1).astype(np.float32)


def expressive_peaks(envelope: np.ndarray, fps: float) -> np.ndarray:
    """Eyebrow raise (F,) in [0, 1]: loudness above 0.8 of the reference, held with a 0.3 s decay."""
    drive = np.clip((np.asarray(envelope, dtype=np.float64) - 0.8) / 0.2, 0, 1)
    decay = np.exp(-1.0 / (0.3 * fps))
    raise_ = np.zeros_like(drive)
    level = 0.0
    for i, value in enumerate(drive):
        level = max(value, level * decay)
        raise_[i] = level
    return raise_.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Instructions and text


def sample_instructions(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """(instructions, held objects): none (20%), one (50%) or two instructions from different groups; each
    object held with probability 0.2."""
    count = rng.choice(3, p=[0.2, 0.5, 0.3])
    groups = rng.choice(len(INSTRUCTION_GROUPS), size=count, replace=False)
    instructions = [str(rng.choice(INSTRUCTION_GROUPS[g])) for g in sorted(groups)]
    objects = [name for name in OBJECT_HANDS if rng.random() < 0.2]
    return instructions, objects


def expected_motions(instructions) -> set[str]:
    """The motions a clip following `instructions` shows: the instructions and what they imply (a wave
    raises the hand)."""
    return set(instructions) | {motion for name in instructions for motion in IMPLIED_MOTIONS.get(name, ())}


def mirrored_instructions(instructions) -> list[str]:
    """`instructions` with left and right exchanged: ["raise_right_hand", "look_up"] -> ["raise_left_hand",
    "look_up"]."""
    swap = {"left": "right", "right": "left"}
    return ["_".join(swap.get(word, word) for word in name.split("_")) for name in instructions]


def _check_instructions(instructions, objects) -> None:
    unknown = [name for name in instructions if name not in INSTRUCTIONS]
    if unknown:
        raise ValueError(f"unknown instructions {unknown}; use any of {sorted(INSTRUCTIONS)}.")
    unknown = [name for name in objects if name not in OBJECT_HANDS]
    if unknown:
        raise ValueError(f"unknown objects {unknown}; use any of {sorted(OBJECT_HANDS)}.")


def short_prompt(instructions, objects=()) -> str:
    """"raise the right hand and look up while holding a pen"."""
    prompt = " and ".join(INSTRUCTIONS[name][0] for name in instructions) or "talk to the camera"
    if objects:
        prompt += " while holding " + " and ".join(f"a {name}" for name in objects)
    return prompt


def full_caption(identity: Identity, instructions, objects=()) -> str:
    """"A person with light skin, short red hair and brown eyes in a blue shirt on a green background raises
    the right hand while talking, holding a pen in the right hand."."""
    hair = HAIR_PHRASES[identity.hair_style].format(identity.hair_name)
    action = " and ".join(INSTRUCTIONS[name][1] for name in instructions)
    action = f"{action} while talking" if action else "talks to the camera"
    holding = "".join(f", holding a {name} in the {OBJECT_HANDS[name]} hand" for name in objects)
    shirt = identity.shirt_name
    article = "an" if shirt[0] in "aeiou" else "a"
    return (f"A person with {identity.skin_name} skin, {hair} and {identity.eye_name} eyes in {article} "
            f"{shirt} shirt on a {identity.background_name} background {action}{holding}.")


def clip_attributes(identity: Identity, objects=()) -> dict:
    """Structured attributes as the prompt enhancer extracts them from a reference image."""
    hair = HAIR_PHRASES[identity.hair_style].format(identity.hair_name)
    return {
        "clothing": f"{identity.shirt_name} shirt",
        "background": f"plain {identity.background_name} background",
        "objects": list(objects),
        "body_pose": "head and shoulders, facing the camera",
        "implicit_actions": ["talking"] + [f"holding a {name}" for name in objects],
        "appearance": f"{identity.skin_name} skin, {hair}, {identity.eye_name} eyes, {identity.face_shape} face",
    }


# ----------------------------------------------------------------------------------------------------------
# Motion


def _ramp(time: np.ndarray, start: float, stop: float) -> np.ndarray:
    """0 before `start`, smoothly 1 from start + RAMP_SECONDS until `stop`, back to 0 after it."""
    rise = np.clip((time - start) / RAMP_SECONDS, 0, 1)
    fall = np.clip((stop - time) / RAMP_SECONDS, 0, 1)
    ramp = np.minimum(rise, fall)
    return ramp * ramp * (3 - 2 * ramp)


def motion_timeline(instructions, audio: np.ndarray, fps: float, num_frames: int, seed: int) -> dict[str, np.ndarray]:
    """Per-frame ground-truth parameters (F,) float32: mouth and brow from the audio, the rest from the
    instructions, each active over a random span covering at least ~45% of the clip."""
    rng = _rng("motion", seed)
    time = np.arange(num_frames) / fps
    duration = num_frames / fps
    mouth = loudness_envelope(audio, fps, num_frames)
    motion = {key: np.zeros(num_frames) for key in MOTION_KEYS}
    motion["mouth"], motion["brow"] = mouth, expressive_peaks(mouth, fps)
    for name in instructions:
        start = rng.uniform(0.1, 0.3) * duration
        stop = min(rng.uniform(0.75, 1.05), 1.0) * duration + (RAMP_SECONDS if rng.random() < 0.5 else 0.0)
        ramp = _ramp(time, start, stop)
        if name.startswith("turn_head_"):
            motion["yaw"] += ramp if name.endswith("left") else -ramp
        elif name == "nod":
            motion["pitch"] += ramp * np.sin(2 * np.pi * NOD_HZ * (time - start))
        elif name.startswith(("raise_", "wave_")):
            side = "right" if "right" in name else "left"
            motion[f"raise_{side}"] = np.maximum(motion[f"raise_{side}"], ramp)
            if name.startswith("wave_"):
                motion[f"wave_{side}"] += ramp * np.sin(2 * np.pi * WAVE_HZ * (time - start))
        else:
            direction = name.removeprefix("look_")
            key = "gaze_x" if direction in ("left", "right") else "gaze_y"
            motion[key] += ramp if direction in ("left", "up") else -ramp
    return {key: value.astype(np.float32) for key, value in motion.items()}


# ----------------------------------------------------------------------------------------------------------
# Rendering


class _Canvas:
    """Soft-edged (anti-aliased) shapes on an (H, W) pixel grid, in world units; alphas are (H, W) float32."""

    def __init__(self, height: int, width: int):
        size = min(height, width)
        self.pixel = 1.0 / size
        self.x = ((np.arange(width) + 0.5 - (width - size) / 2) / size).astype(np.float32)[None, :]
        self.y = ((np.arange(height) + 0.5 - (height - size) / 2) / size).astype(np.float32)[:, None]

    def _alpha(self, signed_distance):
        return np.clip(0.5 - signed_distance / self.pixel, 0, 1)

    def ellipse(self, cx, cy, rx, ry):
        dx, dy = (self.x - cx) / rx, (self.y - cy) / ry
        k = np.sqrt(dx * dx + dy * dy)
        gradient = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2) + 1e-6  # |grad k| * k
        return self._alpha((k - 1) * k / gradient)

    def capsule(self, x0, y0, x1, y1, radius):
        ax, ay, bx, by = self.x - x0, self.y - y0, x1 - x0, y1 - y0
        t = np.clip((ax * bx + ay * by) / max(bx * bx + by * by, 1e-12), 0, 1)
        return self._alpha(np.sqrt((ax - t * bx) ** 2 + (ay - t * by) ** 2) - radius)

    def box(self, cx, cy, half_x, half_y, corner=0.0):
        qx = np.abs(self.x - cx) - (half_x - corner)
        qy = np.abs(self.y - cy) - (half_y - corner)
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
        return self._alpha(outside + np.minimum(np.maximum(qx, qy), 0) - corner)


class _Frame:
    """Paints alphas back to front and tracks which region each pixel shows."""

    def __init__(self, canvas: _Canvas, background):
        self.image = np.empty((canvas.y.size, canvas.x.size, 3), dtype=np.float32)
        self.image[:] = background
        self.coverage = {name: np.zeros(self.image.shape[:2], dtype=np.float32) for name in REGION_NAMES}

    def paint(self, alpha, colour, region=None, region_alpha=None):
        self.image += alpha[..., None] * (np.asarray(colour, dtype=np.float32) - self.image)
        for coverage in self.coverage.values():
            coverage *= 1 - alpha
        if region is not None:
            self.coverage[region] += alpha if region_alpha is None else region_alpha


def _paint_hair_behind(frame, canvas, identity, cx, cy, rx, ry):
    style, hair = identity.hair_style, identity.hair
    if style == "long":
        frame.paint(canvas.box(cx, cy + 0.12, rx + 0.04, 0.3, corner=0.06), hair, "hair")
    elif style == "bob":
        frame.paint(canvas.box(cx, cy + 0.02, rx + 0.045, ry, corner=0.05), hair, "hair")
    elif style == "curly":
        frame.paint(canvas.ellipse(cx, cy - 0.06, rx + 0.08, ry + 0.06), hair, "hair")
    frame.paint(canvas.ellipse(cx, cy - 0.25 * ry, rx + 0.025, 0.8 * ry + 0.03), hair, "hair")
    if style == "bun":
        frame.paint(canvas.ellipse(cx, cy - ry - 0.05, 0.065, 0.065), hair, "hair")


def _hand_position(side: str, raised: float, wave: float, holding: bool) -> tuple[float, float]:
    base = np.array(HAND_HOLD[side] if holding else HAND_REST[side])
    position = base + raised * (np.array(HAND_RAISED[side]) - base)
    return float(position[0] + wave * WAVE_SHIFT), float(position[1])


def _paint_arm(frame, canvas, identity, side, hand, objects):
    """Sleeve, held object and hand of one side; `hand` is the hand centre (x, y)."""
    frame.paint(canvas.capsule(*SHOULDER[side], *hand, ARM_RADIUS), identity.shirt)
    inward = 1 if side == "right" else -1  # towards the image centre
    if "notebook" in objects and OBJECT_HANDS["notebook"] == side:
        centre = (hand[0] - inward * NOTEBOOK_OFFSET[0], hand[1] + NOTEBOOK_OFFSET[1])
        frame.paint(canvas.box(*centre, *NOTEBOOK_HALF_SIZE, corner=0.01), NOTEBOOK_COLOUR)
    if "pen" in objects and OBJECT_HANDS["pen"] == side:
        tip = (hand[0] + inward * PEN_TIP[0], hand[1] + PEN_TIP[1])
        frame.paint(canvas.capsule(*hand, *tip, PEN_RADIUS), PEN_COLOUR)
    frame.paint(canvas.ellipse(*hand, HAND_RADIUS, HAND_RADIUS), identity.skin, "hands")


def _render_frame(canvas: _Canvas, identity: Identity, state: dict, objects) -> _Frame:
    frame = _Frame(canvas, identity.background)
    rx, ry = FACE_SHAPES[identity.face_shape]
    cx, cy = HEAD_CENTER[0], HEAD_CENTER[1] + state["pitch"] * NOD_HEAD_SHIFT
    fx, fy = cx + state["yaw"] * YAW_FEATURE_SHIFT, cy + state["pitch"] * NOD_FEATURE_SHIFT  # features

    _paint_hair_behind(frame, canvas, identity, cx, cy, rx, ry)
    frame.paint(canvas.box(0.5, 0.7, NECK_HALF_WIDTH, 0.15), identity.skin)
    frame.paint(canvas.ellipse(*BODY), identity.shirt)
    head = canvas.ellipse(cx, cy, rx, ry)
    mouth_top = fy + MOUTH_TOP
    frame.paint(head, identity.skin, "jaw", head * (canvas.y > mouth_top))
    fringe_x = cx + state["yaw"] * YAW_FRINGE_SHIFT
    frame.paint(canvas.ellipse(fringe_x, cy - 0.85 * ry, 0.85 * rx, 0.25 * ry), identity.hair, "hair")

    brow_colour = np.asarray(identity.hair) * 0.55
    for side in (-1, 1):
        ex, ey = fx + side * EYE_OFFSET[0], fy + EYE_OFFSET[1]
        eye = canvas.ellipse(ex, ey, *EYE_RADII) * head
        frame.paint(eye, EYE_WHITE, "eyes")
        ix, iy = ex + state["gaze_x"] * GAZE_SHIFT[0], ey - state["gaze_y"] * GAZE_SHIFT[1]
        frame.paint(canvas.ellipse(ix, iy, IRIS_RADIUS, IRIS_RADIUS) * eye, identity.eyes, "eyes")
        frame.paint(canvas.ellipse(ix, iy, PUPIL_RADIUS, PUPIL_RADIUS) * eye, PUPIL_COLOUR, "eyes")
        by = ey + BROW_OFFSET - state["brow"] * BROW_RAISE
        brow = canvas.capsule(ex - BROW_HALF_LENGTH, by, ex + BROW_HALF_LENGTH, by, BROW_RADIUS) * head
        frame.paint(brow, brow_colour, "eyes")

    height = MOUTH_CLOSED_HEIGHT + state["mouth"] * MOUTH_OPEN_HEIGHT
    frame.paint(canvas.ellipse(fx, mouth_top + height / 2, MOUTH_HALF_WIDTH, height / 2) * head, MOUTH_COLOUR, "mouth")

    for side in ("right", "left"):
        holding = any(OBJECT_HANDS[name] == side for name in objects)
        hand = _hand_position(side, state[f"raise_{side}"], state[f"wave_{side}"], holding)
        _paint_arm(frame, canvas, identity, side, hand, objects)
    return frame


def render_frames(identity: Identity, motion: dict[str, np.ndarray], objects=(), height: int = 64,
                  width: int = 64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Renders per-frame parameters (see `motion_timeline`). Returns frames (F, H, W, 3) uint8 and masks:
    region -> (F, H, W) bool, the pixels where that region is visible."""
    if not (16 <= min(height, width) and max(height, width) <= 1024):
        raise ValueError(f"height and width must be within 16..1024 (64 to 256 recommended); got {height}x{width}.")
    canvas = _Canvas(height, width)
    num_frames = len(motion["mouth"])
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    masks = {name: np.empty((num_frames, height, width), dtype=bool) for name in REGION_NAMES}
    for i in range(num_frames):
        frame = _render_frame(canvas, identity, {key: float(value[i]) for key, value in motion.items()}, objects)
        frames[i] = np.clip(np.round(frame.image), 0, 255)
        for name, coverage in frame.coverage.items():
            masks[name][i] = coverage > 0.5
    return frames, masks


def render_clip(identity: Identity, audio: np.ndarray, instructions=(), objects=(), fps: float = 25.0,
                num_frames: int | None = None, height: int = 64, width: int = 64, seed: int = 0) -> SyntheticClip:
    """Renders `identity` talking with `audio` ((N,) float32 at 16 kHz) and following `instructions` (names
    from `INSTRUCTIONS`) while holding `objects` (names from `OBJECT_HANDS`). `num_frames` defaults to
    round(duration * fps); `seed` draws when each instruction starts and ends."""
    instructions, objects = list(instructions), list(objects)
    _check_instructions(instructions, objects)
    audio = np.asarray(audio, dtype=np.float32)
    if num_frames is None:
        num_frames = round(audio.size / SAMPLE_RATE * fps)
    if num_frames < 1:
        raise ValueError(f"the clip has no frames: pass at least 1 / fps = {1 / fps:.3f} s of audio or num_frames.")
    motion = motion_timeline(instructions, audio, fps, num_frames, seed)
    frames, masks = render_frames(identity, motion, objects, height, width)
    return SyntheticClip(frames, audio, masks, motion, identity, instructions, objects, fps, seed)


def render_reference_image(identity: Identity, objects=(), height: int = 64, width: int = 64) -> PIL.Image.Image:
    """The identity at rest with a closed mouth, holding its objects: the reference image of a clip."""
    neutral = {key: np.zeros(1) for key in MOTION_KEYS}
    frames, _ = render_frames(identity, neutral, list(objects), height, width)
    return PIL.Image.fromarray(frames[0])


def clip_seed(seed: int, split: str, index: int) -> int:
    """The seed of clip `index` of a dataset drawn with `seed` from `split`."""
    return int(np.random.SeedSequence([seed, SPLITS.index(split), index]).generate_state(1)[0])


def sample_clip_spec(seed: int, split: str = "train") -> tuple[Identity, list[str], list[str]]:
    """(identity, instructions, objects) of the clip with `seed` in `split`."""
    _check_split(split)
    return (sample_identity(seed, split), *sample_instructions(_rng("instructions", split, seed)))


def synthetic_example(seed: int, split: str = "train", seconds: float = 4.0, fps: float = 25.0, height: int = 64,
                      width: int = 64, audio: np.ndarray | None = None) -> SyntheticClip:
    """A whole random clip from one seed: identity, speech (or the given 16 kHz `audio`), instructions, objects."""
    identity, instructions, objects = sample_clip_spec(seed, split)
    if audio is None:
        audio = synthesize_speech(seconds, seed, split)
    return render_clip(identity, audio, instructions, objects, fps, None, height, width, seed)


def write_clip_dataset(out_dir, n_clips: int, seconds: float = 4.0, fps: float = 25.0, height: int = 64,
                       width: int = 64, split: str = "train", seed: int = 0, audio_paths=None,
                       side_twins: bool = False) -> Path:
    """Writes `n_clips` clips as `clip_00000.mp4` (H.264 + AAC audio), `clip_00000_masks.npz` (one (F, H, W)
    bool array per region) and one `metadata.jsonl` line per clip, all under `out_dir`.

    `audio_paths`: optional real recordings, used in turn (cut to `seconds`) instead of synthetic speech.
    `side_twins`: after each clip whose instructions name a side, also write its twin `clip_00000_twin` (the name
    ends in `TWIN_SUFFIX`, which the training script's `--twin_difference_weight` pairs by): the same
    identity, audio, objects and timing with left and right exchanged (`mirrored_instructions`), a pair that differs
    only in the side the text names. Returns `out_dir` as a Path.
    """
    from ..media import load_audio, save_video

    _check_split(split)
    if n_clips < 1:
        raise ValueError(f"`n_clips` must be at least 1; got {n_clips}.")
    if height % 2 or width % 2:
        raise ValueError(f"H.264 needs even sizes; got {height}x{width}. Use e.g. 64x64.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "metadata.jsonl", "w", encoding="utf-8") as metadata:

        def write(clip: SyntheticClip, name: str) -> None:
            save_video(clip.frames, out_dir / f"{name}.mp4", fps, audio=clip.audio, sample_rate=SAMPLE_RATE)
            np.savez_compressed(out_dir / f"{name}_masks.npz", **clip.masks)
            record = {
                "file_name": f"{name}.mp4", "caption": clip.caption, "prompt": clip.prompt,
                "masks": f"{name}_masks.npz", "attributes": clip_attributes(clip.identity, clip.objects),
                "identity": clip.identity.to_dict(), "instructions": clip.instructions, "objects": clip.objects,
                "fps": fps, "num_frames": len(clip.frames), "seconds": len(clip.frames) / fps,
                "split": split, "seed": clip.seed,
            }
            metadata.write(json.dumps(record) + "\n")

        for index in range(n_clips):
            this_seed = clip_seed(seed, split, index)
            audio = None
            if audio_paths:
                audio = load_audio(audio_paths[index % len(audio_paths)])[: round(seconds * SAMPLE_RATE)]
            clip = synthetic_example(this_seed, split, seconds, fps, height, width, audio)
            write(clip, f"clip_{index:05d}")
            mirrored = mirrored_instructions(clip.instructions)
            if side_twins and mirrored != clip.instructions:
                write(render_clip(clip.identity, clip.audio, mirrored, clip.objects, fps, None, height, width,
                                  this_seed), f"clip_{index:05d}{TWIN_SUFFIX}")
    return out_dir
