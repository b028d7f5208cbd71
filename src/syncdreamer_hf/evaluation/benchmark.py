"""The synthetic-world fidelity benchmark, for any video generator.

`run_synthetic_benchmark(generate, ...)` asks `generate(image, audio, prompt) -> frames (F, H, W, 3) uint8`
for clips of held-out identities speaking held-out audio under held-out instructions, measures the videos with
`evaluation.synthetic`, and reports (as a JSON-able dict):

- lip-sync r: Pearson r of the measured mouth opening against the audio's loudness envelope at the video frame
  rate, at the best lag within +/-`max_lag` frames (one lag for all clips, reported with it);
- swapped-audio r: each clip generated again with the next clip's audio, measured against its ORIGINAL audio
  (near 0 when the model listens to the audio; high when it ignores it);
- identity colour error: mean absolute RGB error (a fraction of 255) of background, skin, hair and shirt against the true
  identity, over the video and per window of `drift_window_seconds` (drift = last window - first window; slope = the
  least-squares slope of the per-window errors against time, per second);
- lip-sync r per window of `drift_window_seconds` too (at the lag of the whole clips), to see whether it holds up;
- instruction accuracy: recall of the instructed motions, and the share of clips with no motion that was not
  asked for; and whether held objects persist;
- seconds of generation per generated second.

`render_ground_truth_generator(cases)` renders the true clips; scored by the same code it sets the ceiling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import PIL.Image

from ..data import synthetic as world
from ..data.user_prompts import sample_user_prompt
from .synthetic import analyze_video, colour_error, detect_motions


@dataclass
class BenchmarkCase:
    """One benchmark clip: what the generator gets (image, audio, prompt) and the truth it is scored against."""

    image: PIL.Image.Image
    audio: np.ndarray  # (N,) float32, 16 kHz
    prompt: str
    identity: world.Identity
    instructions: list[str]
    objects: list[str]
    fps: float
    seed: int


def make_benchmark_cases(n_clips: int = 8, seconds: float = 4.0, fps: float = 25.0, height: int = 64,
                         width: int = 64, seed: int = 0, speech: list[np.ndarray] | None = None,
                         user_prompts: bool = False) -> list[BenchmarkCase]:
    """Held-out identities, audio and instructions; every third clip asks for no motion at all (the check that
    nothing moves unasked). `speech`: recordings `(N,)` float32 16 kHz to drive the clips instead of the world's
    synthetic speech (clip i takes recording i modulo their number, cut or padded with silence to `seconds`).
    `user_prompts`: prompt each clip with a held-out user-style prompt meaning its instructions on its image
    (`data.user_prompts`, "say hi to everyone") instead of the world's exact phrase."""
    if n_clips < 1:
        raise ValueError(f"`n_clips` must be at least 1; got {n_clips}.")
    if not seconds > 0:
        raise ValueError(f"`seconds` must be positive; got {seconds}.")
    cases = []
    for index in range(n_clips):
        clip_seed = world.clip_seed(seed, "heldout", index)
        identity, instructions, objects = world.sample_clip_spec(clip_seed, "heldout")
        if index % 3 == 2:
            instructions = []
        cases.append(BenchmarkCase(
            image=world.render_reference_image(identity, objects, height, width),
            audio=(world.synthesize_speech(seconds, clip_seed, "heldout") if not speech
                   else _fit(speech[index % len(speech)], round(seconds * world.SAMPLE_RATE))),
            prompt=(sample_user_prompt(instructions, objects, "heldout", np.random.default_rng(clip_seed)).text
                    if user_prompts else world.short_prompt(instructions, objects)),
            identity=identity, instructions=instructions, objects=objects, fps=fps, seed=clip_seed,
        ))
    return cases


def _fit(audio: np.ndarray, num_samples: int) -> np.ndarray:
    """`audio` cut or padded with silence to `num_samples`."""
    audio = np.asarray(audio, dtype=np.float32)[:num_samples]
    return np.pad(audio, (0, num_samples - len(audio)))


def render_ground_truth_generator(cases: list[BenchmarkCase]):
    """A `generate(image, audio, prompt)` that renders the true clip of the case with that image and prompt,
    driven by whatever audio it is given."""
    by_input = {(case.image.tobytes(), case.prompt): case for case in cases}

    def generate(image: PIL.Image.Image, audio: np.ndarray, prompt: str) -> np.ndarray:
        case = by_input.get((image.tobytes(), prompt))
        if case is None:
            raise ValueError("this ground-truth generator only renders the cases it was built from.")
        return world.render_clip(case.identity, audio, case.instructions, case.objects, case.fps,
                                 height=image.height, width=image.width, seed=case.seed).frames

    return generate


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; 0 where either series is constant (a still mouth does not follow the audio)."""
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / scale) if scale > 1e-12 else 0.0


def _lagged_pearson(mouth: np.ndarray, envelope: np.ndarray, lag: int) -> float:
    """r of mouth[t] against envelope[t - lag]: lag > 0 means the mouth follows the audio late."""
    if lag >= 0:
        return _pearson(mouth[lag:], envelope[: len(envelope) - lag])
    return _pearson(mouth[:lag], envelope[-lag:])


def lip_sync(mouths: list[np.ndarray], envelopes: list[np.ndarray], max_lag: int = 2) -> dict:
    """Mean Pearson r over clips at the one lag in [-max_lag, max_lag] that maximises it.

    Returns {"r": float, "lag_frames": int, "per_clip": [float]}."""
    by_lag = {lag: [_lagged_pearson(m, e, lag) for m, e in zip(mouths, envelopes)]
              for lag in range(-max_lag, max_lag + 1)}
    best = max(by_lag, key=lambda lag: (np.mean(by_lag[lag]), -abs(lag)))
    return {"r": float(np.mean(by_lag[best])), "lag_frames": best, "per_clip": by_lag[best]}


def _windowed(values: np.ndarray, window: int) -> list[float]:
    """Means of consecutive windows of `window` frames (a shorter last window is kept)."""
    return [float(values[start: start + window].mean()) for start in range(0, len(values), window)]


def _as_frames(frames, expected_size) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"`generate` must return frames as an (F, H, W, 3) uint8 array; got {frames.dtype} "
                         f"{frames.shape}. Convert with (frames * 255).round().astype(np.uint8).")
    if frames.shape[1:3] != expected_size:
        raise ValueError(f"`generate` returned {frames.shape[1]}x{frames.shape[2]} frames; the benchmark asked for "
                         f"{expected_size[0]}x{expected_size[1]} (the size of the reference image).")
    return frames


def run_synthetic_benchmark(generate, n_clips: int = 8, seconds: float = 4.0, fps: float = 25.0, height: int = 64,
                            width: int = 64, seed: int = 0, max_lag: int = 2, drift_window_seconds: float = 1.0,
                            swapped_audio: bool = True, speech: list[np.ndarray] | None = None,
                            user_prompts: bool = False) -> dict:
    """Scores `generate(image: PIL.Image, audio: np.ndarray (N,) float32 16 kHz, prompt: str) -> (F, H, W, 3)
    uint8` on `n_clips` held-out clips of `seconds` each at `fps`; see the module docstring for the metrics.

    Returns a JSON-able dict: the settings, the metrics, and `clips` (one dict per clip)."""
    if swapped_audio and n_clips < 2:
        raise ValueError(f"the swapped-audio test pairs clips: pass at least 2 clips or turn it off; got {n_clips}.")
    cases = make_benchmark_cases(n_clips, seconds, fps, height, width, seed, speech, user_prompts)
    window = max(1, round(drift_window_seconds * fps))
    generation_seconds, generated_seconds = 0.0, 0.0

    def timed_generate(case, audio):
        nonlocal generation_seconds, generated_seconds
        start = time.perf_counter()
        frames = _as_frames(generate(case.image, audio, case.prompt), (height, width))
        generation_seconds += time.perf_counter() - start
        generated_seconds += len(frames) / fps
        return frames

    mouths, swapped_mouths, envelopes, clips = [], [], [], []
    recalled, instructed, clean_clips, colour_windows, persistence = 0, 0, 0, [], []
    for index, case in enumerate(cases):
        measured = analyze_video(timed_generate(case, case.audio))
        num_frames = len(measured.mouth_opening)
        envelope = world.loudness_envelope(case.audio, fps, num_frames)
        mouths.append(measured.mouth_opening)
        envelopes.append(envelope)
        if swapped_audio:
            other = cases[(index + 1) % len(cases)].audio
            swapped = analyze_video(timed_generate(case, other)).mouth_opening
            swapped_mouths.append(swapped[: num_frames])

        errors = colour_error(measured.colours, case.identity.colours)
        colour_windows.append(_windowed(errors, window))
        detected = detect_motions(measured, fps)
        unasked = sorted(detected - world.expected_motions(case.instructions))
        recalled += len(set(case.instructions) & detected)
        instructed += len(case.instructions)
        clean_clips += not unasked
        persistence += [float(measured.objects[name].mean()) for name in case.objects]
        clips.append({
            "prompt": case.prompt, "instructions": case.instructions, "detected": sorted(detected),
            "unasked_motions": unasked, "objects": case.objects, "num_frames": num_frames,
            "instruction_prompt": world.short_prompt(case.instructions, case.objects),
            "identity_colour_error": float(errors.mean()), "identity": case.identity.to_dict(),
        })

    sync = lip_sync([m[: len(e)] for m, e in zip(mouths, envelopes)], envelopes, max_lag)
    for clip, r in zip(clips, sync["per_clip"]):
        clip["lip_sync_r"] = r
    per_window = [float(np.mean([w[i] for w in colour_windows if i < len(w)]))
                  for i in range(max(map(len, colour_windows)))]
    window_centres = (np.arange(len(per_window)) + 0.5) * window / fps
    slope = float(np.polyfit(window_centres, per_window, 1)[0]) if len(per_window) > 1 else 0.0
    lip_sync_per_window = []  # at the lag of the whole clips
    for start in range(0, max(map(len, envelopes)), window):
        rs = [_lagged_pearson(m[start: start + window], e[start: start + window], sync["lag_frames"])
              for m, e in zip(mouths, envelopes) if len(e) - start > abs(sync["lag_frames"]) + 1]
        lip_sync_per_window.append(float(np.mean(rs)) if rs else None)
    results = {
        "settings": {"n_clips": n_clips, "seconds": seconds, "fps": fps, "height": height, "width": width,
                     "seed": seed, "max_lag": max_lag, "drift_window_seconds": drift_window_seconds,
                     "user_prompts": user_prompts},
        "lip_sync_r": sync["r"],
        "lip_sync_lag_frames": sync["lag_frames"],
        "identity_colour_error": float(np.mean([c["identity_colour_error"] for c in clips])),
        "identity_colour_error_per_window": per_window,
        "identity_colour_drift": per_window[-1] - per_window[0],
        "identity_colour_slope_per_second": slope,
        "lip_sync_r_per_window": lip_sync_per_window,
        "instruction_recall": recalled / instructed if instructed else None,
        "no_unasked_motion": clean_clips / len(cases),
        "object_persistence": float(np.mean(persistence)) if persistence else None,
        "seconds_per_generated_second": generation_seconds / max(generated_seconds, 1e-9),
        "clips": clips,
    }
    if swapped_audio:
        swapped = lip_sync([m[: len(e)] for m, e in zip(swapped_mouths, envelopes)], envelopes, max_lag)
        results["swapped_audio_r"], results["swapped_audio_lag_frames"] = swapped["r"], swapped["lag_frames"]
    return results


TABLE_ROWS = (  # (key, label, formatter)
    ("lip_sync_r", "lip-sync r (higher is better)", "{:.3f}".format),
    ("lip_sync_lag_frames", "lip-sync lag (frames, + = mouth late)", "{:+d}".format),
    ("swapped_audio_r", "swapped-audio r (near 0 is better)", "{:.3f}".format),
    ("identity_colour_error", "identity colour error", lambda error: f"{error * 255:.1f}/255"),
    ("identity_colour_drift", "identity colour drift (last - first window)", lambda drift: f"{drift * 255:+.1f}/255"),
    ("identity_colour_slope_per_second", "identity colour error slope", lambda slope: f"{slope * 255:+.2f}/255 per s"),
    ("instruction_recall", "instructed motions detected", "{:.1%}".format),
    ("no_unasked_motion", "clips without unasked motion", "{:.1%}".format),
    ("object_persistence", "held objects visible (frames)", "{:.1%}".format),
    ("seconds_per_generated_second", "seconds per generated second", "{:.3f}".format),
)


def format_benchmark_table(results: dict) -> str:
    """The headline metrics of `run_synthetic_benchmark` as a Markdown table."""
    settings = results["settings"]
    lines = [f"Synthetic benchmark: {settings['n_clips']} held-out clips x {settings['seconds']} s at "
             f"{settings['fps']} fps, {settings['height']}x{settings['width']}"
             + (", held-out user-style prompts" if settings.get("user_prompts") else ""), "",
             "| metric | value |", "|---|---|"]
    for key, label, formatter in TABLE_ROWS:
        value = results.get(key)
        lines.append(f"| {label} | {'n/a' if value is None else formatter(value)} |")
    return "\n".join(lines)
