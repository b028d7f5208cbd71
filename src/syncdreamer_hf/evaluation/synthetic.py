"""Measurements on any video of the synthetic avatar world: renders, or frames a model generated.

Every analyzer takes frames (F, H, W, 3) uint8 and returns per-frame values in world units (1 = the shorter
image side, see `data/synthetic.py`), so any resolution reads the same. They rely on the world's fixed layout
and colours only, never on masks, and are built to survive blur, colour noise and JPEG: colours are medians
over fixed patches, and positions are sums and centroids of soft colour memberships, which blur preserves.

- `estimate_identity_colours`: background, skin, hair and shirt colour per frame.
- `measure_head`: head top (nod), head centre x, mouth centre x and yaw.
- `measure_mouth_opening`: 0 closed .. 1 fully open, in the renderer's units.
- `measure_gaze`, `measure_hands`, `measure_objects`.
- `analyze_video` runs them all; `detect_motions` turns the result into the instruction names it shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import synthetic as world

# Patches (x0, x1, y0, y1) that show one colour in every frame of every identity and instruction.
COLOUR_PATCHES = {
    "background": ((0.02, 0.12, 0.02, 0.12), (0.88, 0.98, 0.02, 0.12)),
    "skin": ((0.47, 0.53, 0.70, 0.77),),  # the neck
    "hair": ((0.45, 0.55, 0.16, 0.2),),  # the fringe
    "shirt": ((0.42, 0.58, 0.88, 0.97),),
}
HEAD_CENTER_Y = world.HEAD_CENTER[1]
HEAD_TOP_COLUMNS = (0.45, 0.55)
HEAD_SEARCH_HALF_WIDTH = 0.34  # the widest hair reaches 0.3 from the centre; raised hands and objects lie beyond
MOUTH_ROWS = (0.43, 0.65)
EYE_ROWS = (0.26, 0.46)
EYE_WINDOW = (0.07, 0.045)  # half sizes around each eye
FEATURE_HALF_WIDTH = 0.17  # where the mouth and eyes are searched around the head centre
MOUTH_WINDOW_HALF_WIDTH = 0.12
COLOUR_TOLERANCE = 40.0  # how far off a skin-to-feature colour line a pixel may be and still count
GAZE_FULL = (0.036, 0.022)  # iris-minus-white centroid offset at full gaze, measured on clean 64x64 renders
HAND_REGIONS = {  # (x0, x1) of the side; the face above y = 0.66 between x = 0.27 and 0.73 is excluded
    "right": (0.0, 0.42),
    "left": (0.58, 1.0),
}
HAND_PRESENT_AREA = 0.25 * np.pi * world.HAND_RADIUS**2  # of colour-matching area, a quarter of the drawn one
OBJECT_PRESENT_AREA = {
    "pen": 0.2 * 2 * world.PEN_RADIUS * np.hypot(*world.PEN_TIP),  # the hand hides part of the pen
    "notebook": 0.2 * 4 * world.NOTEBOOK_HALF_SIZE[0] * world.NOTEBOOK_HALF_SIZE[1],
}
OBJECT_COLOURS = {"pen": world.PEN_COLOUR, "notebook": world.NOTEBOOK_COLOUR}

# Detection thresholds, in the units of the measurements (1 = the full instructed motion).
YAW_THRESHOLD = 0.5
GAZE_THRESHOLD = 0.5
RAISED_HAND_HEIGHT = 0.6
NOD_PEAK_TO_PEAK = world.NOD_HEAD_SHIFT  # half the head's full nod travel
WAVE_PEAK_TO_PEAK = world.WAVE_SHIFT  # half the hand's full wave travel
MIN_SECONDS = 0.2  # a motion must hold this long


class _Grid:
    """World coordinates of the pixel centres of an (H, W) frame."""

    def __init__(self, height: int, width: int):
        size = min(height, width)
        self.pixel = 1.0 / size
        self.x = (np.arange(width) + 0.5 - (width - size) / 2) / size
        self.y = (np.arange(height) + 0.5 - (height - size) / 2) / size

    def columns(self, x0, x1) -> slice:
        return slice(*np.searchsorted(self.x, (x0, x1)))

    def rows(self, y0, y1) -> slice:
        return slice(*np.searchsorted(self.y, (y0, y1)))


def _as_float(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"`frames` must be an (F, H, W, 3) uint8 array; got shape {frames.shape}.")
    return frames.astype(np.float32)


def _nearness(frames, colour, radius) -> np.ndarray:
    """(F, H, W) in [0, 1]: 1 at `colour` ((3,) or (F, 3)), falling linearly to 0 at `radius` levels away."""
    colour = np.asarray(colour, dtype=np.float32).reshape(-1, 1, 1, 3)
    return np.clip(1 - np.linalg.norm(frames - colour, axis=-1) / radius, 0, 1)


def _fraction_of(frames, base, target) -> np.ndarray:
    """(F, H, W) in [0, 1]: how much of `target` each pixel holds, read as a mix of `base` (F, 3) and `target`
    (3,); pixels off that colour line by more than `COLOUR_TOLERANCE` count less, down to 0."""
    base = np.asarray(base, dtype=np.float32).reshape(-1, 1, 1, 3)
    direction = np.asarray(target, dtype=np.float32) - base
    offset = frames - base
    fraction = np.clip((offset * direction).sum(-1) / np.maximum((direction**2).sum(-1), 1.0), 0, 1)
    residual = np.linalg.norm(offset - fraction[..., None] * direction, axis=-1)
    return fraction * np.clip(1 - residual / COLOUR_TOLERANCE, 0, 1)


def _centroid(weights, coordinates, axis, fallback) -> np.ndarray:
    """Weighted mean of `coordinates` along `axis` of (F, H, W) weights, `fallback` where the weights vanish."""
    mass = weights.sum(axis=(1, 2))
    shape = [1, 1, 1]
    shape[axis] = -1
    total = (weights * coordinates.reshape(shape)).sum(axis=(1, 2))
    return np.where(mass > 1e-3, total / np.maximum(mass, 1e-3), fallback)


def estimate_identity_colours(frames) -> dict[str, np.ndarray]:
    """Background, skin, hair and shirt colour of every frame: name -> (F, 3) float32, 0-255 (medians)."""
    frames = _as_float(frames)
    grid = _Grid(*frames.shape[1:3])
    colours = {}
    for name, patches in COLOUR_PATCHES.items():
        pixels = [frames[:, grid.rows(y0, y1), grid.columns(x0, x1)].reshape(len(frames), -1, 3)
                  for x0, x1, y0, y1 in patches]
        colours[name] = np.median(np.concatenate(pixels, axis=1), axis=1)
    return colours


def colour_error(colours: dict[str, np.ndarray], reference: dict) -> np.ndarray:
    """Per-frame identity colour error (F,): mean absolute difference over the four colours and RGB, /255."""
    errors = [np.abs(colours[name] - np.asarray(reference[name], dtype=np.float32)).mean(-1) for name in COLOUR_PATCHES]
    return np.mean(errors, axis=0) / 255.0


def _skin_radius(colours) -> np.ndarray:
    """(F,): how far from the skin colour a pixel still counts as skin: 60% of the way to the nearest other
    colour of the identity or to the eye white, at least COLOUR_TOLERANCE."""
    others = [colours[name] for name in ("background", "hair", "shirt")] + [np.asarray(world.EYE_WHITE)]
    nearest = np.min([np.linalg.norm(colours["skin"] - other, axis=-1) for other in others], axis=0)
    return np.maximum(0.6 * nearest, COLOUR_TOLERANCE)


def _background_fraction(frames, colours) -> np.ndarray:
    """(F, H, W): share of background in each pixel, exact for background/hair mixes (soft edges, blur)."""
    distance = np.linalg.norm(colours["hair"] - colours["background"], axis=-1)
    return _nearness(frames, colours["background"], np.maximum(distance, 1.0)[:, None, None])


def measure_head(frames, colours=None) -> dict[str, np.ndarray]:
    """Head pose per frame, each (F,): `top` (y of the top of the hair, moves with nods), `x` (centre of the
    head outline), `mouth_x` (centre of the mouth) and `yaw` (+1: turned fully to the avatar's left)."""
    frames = _as_float(frames)
    colours = colours or estimate_identity_colours(frames)
    grid = _Grid(*frames.shape[1:3])
    background = _background_fraction(frames, colours)

    above_head = grid.rows(grid.y[0] - 1, HEAD_CENTER_Y)
    column = background[:, above_head, grid.columns(*HEAD_TOP_COLUMNS)].mean(axis=2)
    top = grid.y[0] - grid.pixel / 2 + column.sum(axis=1) * grid.pixel

    x = np.empty(len(frames))
    left_half = (grid.x >= 0.5 - HEAD_SEARCH_HALF_WIDTH) & (grid.x < 0.5)
    right_half = (grid.x >= 0.5) & (grid.x < 0.5 + HEAD_SEARCH_HALF_WIDTH)
    for i, row in enumerate(np.round((top + 0.05 - grid.y[0]) / grid.pixel).astype(int)):
        band = background[i, max(row - 1, 0): row + 2].mean(axis=0)
        left_edge = 0.5 - HEAD_SEARCH_HALF_WIDTH + band[left_half].sum() * grid.pixel
        right_edge = 0.5 + HEAD_SEARCH_HALF_WIDTH - band[right_half].sum() * grid.pixel
        x[i] = (left_edge + right_edge) / 2

    mouth = _fraction_of(frames, colours["skin"], world.MOUTH_COLOUR)
    window = mouth[:, grid.rows(*MOUTH_ROWS)] * (np.abs(grid.x - x[:, None]) < FEATURE_HALF_WIDTH)[:, None, :]
    mouth_x = _centroid(window, grid.x, axis=2, fallback=x)
    return {"top": top, "x": x, "mouth_x": mouth_x, "yaw": (mouth_x - x) / world.YAW_FEATURE_SHIFT}


def measure_mouth_opening(frames, colours=None, head=None) -> np.ndarray:
    """Mouth opening per frame (F,): 0 closed, 1 fully open (the renderer's `mouth` parameter), from the area
    of mouth colour around the mouth."""
    frames = _as_float(frames)
    colours = colours or estimate_identity_colours(frames)
    head = head or measure_head(frames, colours)
    grid = _Grid(*frames.shape[1:3])
    rows = grid.rows(*MOUTH_ROWS)
    mouth = _fraction_of(frames[:, rows], colours["skin"], world.MOUTH_COLOUR)
    near_mouth = np.abs(grid.x - head["mouth_x"][:, None]) < MOUTH_WINDOW_HALF_WIDTH
    area = (mouth * near_mouth[:, None, :]).sum(axis=(1, 2)) * grid.pixel**2
    height = 2 * area / (np.pi * world.MOUTH_HALF_WIDTH)  # of an ellipse with the mouth's width
    return (height - world.MOUTH_CLOSED_HEIGHT) / world.MOUTH_OPEN_HEIGHT


def measure_gaze(frames, colours=None, head=None) -> np.ndarray:
    """Gaze per frame (F, 2): (x, y), +x towards the avatar's left (image right), +y up; 1 = full gaze.

    Each eye is found beside the mouth, at the height of its white; the gaze is the centroid of the iris (what
    is neither skin nor white) relative to the centroid of the white, which moves the other way."""
    frames = _as_float(frames)
    colours = colours or estimate_identity_colours(frames)
    head = head or measure_head(frames, colours)
    grid = _Grid(*frames.shape[1:3])
    rows = grid.rows(*EYE_ROWS)
    frames, y = frames[:, rows], grid.y[rows]
    skin = _nearness(frames, colours["skin"], _skin_radius(colours)[:, None, None])
    white = _fraction_of(frames, colours["skin"], world.EYE_WHITE)
    iris = np.clip(1 - skin - white, 0, 1)

    offsets = []
    for side in (-1, 1):
        eye_x = head["mouth_x"] + side * world.EYE_OFFSET[0]
        columns = (np.abs(grid.x - eye_x[:, None]) < EYE_WINDOW[0])[:, None, :]
        eye_y = _centroid(white * columns, y, 1, HEAD_CENTER_Y + world.EYE_OFFSET[1])
        window = columns & (np.abs(y - eye_y[:, None]) < EYE_WINDOW[1])[:, :, None]
        offsets.append([_centroid(iris * window, grid.x, 2, eye_x) - _centroid(white * window, grid.x, 2, eye_x),
                        _centroid(white * window, y, 1, eye_y) - _centroid(iris * window, y, 1, eye_y)])
    return np.mean(offsets, axis=0).T / np.asarray(GAZE_FULL)


def measure_hands(frames, colours=None) -> dict[str, np.ndarray]:
    """Per side ("right", "left": the avatar's own) the hand height (F,), 0 hidden/resting .. 1 raised to
    head level, and `{side}_x` the hand's x (F,), NaN where no hand shows."""
    frames = _as_float(frames)
    colours = colours or estimate_identity_colours(frames)
    grid = _Grid(*frames.shape[1:3])
    skin = _nearness(frames, colours["skin"], _skin_radius(colours)[:, None, None])
    face = (np.abs(grid.x - 0.5) < 0.23)[None, :] & (grid.y < 0.66)[:, None]
    rest_y, raised_y = 1.0, world.HAND_RAISED["right"][1]
    hands = {}
    for side, (x0, x1) in HAND_REGIONS.items():
        weights = skin * (((grid.x >= x0) & (grid.x < x1))[None, :] & ~face)
        present = weights.sum(axis=(1, 2)) * grid.pixel**2 > HAND_PRESENT_AREA
        hand_y = _centroid(weights, grid.y, 1, rest_y)
        hands[side] = np.where(present, np.clip((rest_y - hand_y) / (rest_y - raised_y), 0, 1), 0.0)
        hands[f"{side}_x"] = np.where(present, _centroid(weights, grid.x, 2, np.nan), np.nan)
    return hands


def measure_objects(frames) -> dict[str, np.ndarray]:
    """Whether each held object ("pen", "notebook") shows in each frame: name -> (F,) bool."""
    frames = _as_float(frames)
    area = _Grid(*frames.shape[1:3]).pixel ** 2
    return {name: _nearness(frames, OBJECT_COLOURS[name], world.MIN_COLOUR_DISTANCE).sum(axis=(1, 2)) * area
            > OBJECT_PRESENT_AREA[name] for name in OBJECT_COLOURS}


@dataclass
class VideoMeasurements:
    """Everything the analyzers read from one video; every array has F rows."""

    colours: dict[str, np.ndarray]
    mouth_opening: np.ndarray
    head: dict[str, np.ndarray]
    gaze: np.ndarray
    hands: dict[str, np.ndarray]
    objects: dict[str, np.ndarray]


def analyze_video(frames) -> VideoMeasurements:
    """Runs every analyzer on frames (F, H, W, 3) uint8."""
    frames = _as_float(frames)
    colours = estimate_identity_colours(frames)
    head = measure_head(frames, colours)
    return VideoMeasurements(
        colours=colours,
        mouth_opening=measure_mouth_opening(frames, colours, head),
        head=head,
        gaze=measure_gaze(frames, colours, head),
        hands=measure_hands(frames, colours),
        objects=measure_objects(frames),
    )


def _holds(condition: np.ndarray, min_frames: int) -> bool:
    """Whether `condition` (F,) bool is true for at least `min_frames` frames in a row."""
    run = 0
    for value in condition:
        run = run + 1 if value else 0
        if run >= min_frames:
            return True
    return False


def _peak_to_peak(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.percentile(values, 95) - np.percentile(values, 5)) if values.size else 0.0


def detect_motions(measurements: VideoMeasurements, fps: float) -> set[str]:
    """The instruction names (`data.synthetic.INSTRUCTIONS`) whose motion the video shows."""
    min_frames = max(2, round(MIN_SECONDS * fps))
    yaw, (gaze_x, gaze_y) = measurements.head["yaw"], measurements.gaze.T
    tests = {
        "turn_head_left": yaw > YAW_THRESHOLD, "turn_head_right": yaw < -YAW_THRESHOLD,
        "look_left": gaze_x > GAZE_THRESHOLD, "look_right": gaze_x < -GAZE_THRESHOLD,
        "look_up": gaze_y > GAZE_THRESHOLD, "look_down": gaze_y < -GAZE_THRESHOLD,
    }
    detected = {name for name, condition in tests.items() if _holds(condition, min_frames)}
    if _peak_to_peak(measurements.head["top"]) > NOD_PEAK_TO_PEAK:
        detected.add("nod")
    for side in ("right", "left"):
        raised = measurements.hands[side] > RAISED_HAND_HEIGHT
        if _holds(raised, min_frames):
            detected.add(f"raise_{side}_hand")
            if _peak_to_peak(measurements.hands[f"{side}_x"][raised]) > WAVE_PEAK_TO_PEAK:
                detected.add(f"wave_{side}_hand")
    return detected
