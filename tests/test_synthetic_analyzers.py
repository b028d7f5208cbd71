"""evaluation/synthetic.py: the analyzers recover the renderer's parameters, also from blurred, noisy, JPEG frames."""

import io

import numpy as np
import PIL.Image
import PIL.ImageFilter
import pytest

from syncdreamer_hf.data import synthetic as world
from syncdreamer_hf.evaluation import synthetic as analyzers

N_CLIPS = 16
HEAD_AND_HAND_MOTIONS = {"turn_head_left", "turn_head_right", "nod", "raise_right_hand", "raise_left_hand",
                         "wave_right_hand", "wave_left_hand"}


def degrade(frames: np.ndarray, seed: int = 0) -> np.ndarray:
    """What generated frames look like: Gaussian blur (0.8 px), colour noise (std 6 levels), JPEG quality 70."""
    rng = np.random.default_rng(seed)
    out = []
    for frame in frames:
        blurred = np.asarray(PIL.Image.fromarray(frame).filter(PIL.ImageFilter.GaussianBlur(0.8)), dtype=np.float32)
        noisy = np.clip(blurred + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        PIL.Image.fromarray(noisy).save(buffer, format="JPEG", quality=70)
        out.append(np.asarray(PIL.Image.open(buffer).convert("RGB")))
    return np.stack(out)


@pytest.fixture(scope="module")
def clips():
    """Random clips (identities, speech, instructions, objects) with their clean and degraded measurements."""
    result = []
    for seed in range(N_CLIPS):
        clip = world.synthetic_example(seed, "train", seconds=3.0, fps=25.0)
        result.append((clip, analyzers.analyze_video(clip.frames), analyzers.analyze_video(degrade(clip.frames, seed))))
    return result


def test_mouth_opening_matches_the_renderer_on_clean_renders(clips):
    for clip, clean, _ in clips:
        assert np.corrcoef(clean.mouth_opening, clip.motion["mouth"])[0, 1] >= 0.95
        assert np.abs(clean.mouth_opening - clip.motion["mouth"]).mean() < 0.1  # in the renderer's units


def test_mouth_opening_survives_blur_noise_and_jpeg(clips):
    for clip, _, degraded in clips:
        assert np.corrcoef(degraded.mouth_opening, clip.motion["mouth"])[0, 1] >= 0.9


def test_silent_video_measures_a_closed_mouth():
    clip = world.render_clip(world.sample_identity(1), np.zeros(16000, np.float32), fps=25.0)
    assert np.abs(analyzers.measure_mouth_opening(clip.frames)).max() < 0.05


def test_instructed_motions_are_detected(clips):
    instructed = [(name, name in analyzers.detect_motions(clean, clip.fps))
                  for clip, clean, _ in clips for name in clip.instructions]
    assert len(instructed) >= 12
    assert np.mean([hit for _, hit in instructed]) >= 0.95, instructed


def test_no_motion_is_detected_where_none_was_asked(clips):
    unasked = [analyzers.detect_motions(clean, clip.fps) - world.expected_motions(clip.instructions)
               for clip, clean, _ in clips]
    assert sum(map(len, unasked)) <= 1, unasked


def test_head_and_hand_motions_survive_degradation(clips):
    instructed = [(name, name in analyzers.detect_motions(degraded, clip.fps))
                  for clip, _, degraded in clips for name in clip.instructions if name in HEAD_AND_HAND_MOTIONS]
    assert np.mean([hit for _, hit in instructed]) >= 0.9, instructed


def test_head_yaw_gaze_and_hands_track_the_renderer(clips):
    series = {"yaw": [], "gaze_x": [], "gaze_y": [], "raise_right": [], "raise_left": []}
    for clip, clean, _ in clips:
        measured = {"yaw": clean.head["yaw"], "gaze_x": clean.gaze[:, 0], "gaze_y": clean.gaze[:, 1],
                    "raise_right": clean.hands["right"], "raise_left": clean.hands["left"]}
        for key, values in measured.items():
            if clip.motion[key].std() > 0.1:
                series[key].append(np.corrcoef(values, clip.motion[key])[0, 1])
    for key, correlations in series.items():
        assert correlations and min(correlations) > 0.9, (key, correlations)


def test_identity_colours_are_recovered_within_a_few_levels(clips):
    for clip, clean, degraded in clips:
        for name, true_colour in clip.identity.colours.items():
            assert np.abs(clean.colours[name] - true_colour).max() <= 1, name
            error = np.abs(np.median(degraded.colours[name], axis=0) - true_colour)
            assert error.mean() <= 8 and error.max() <= 12, (name, error)  # JPEG shifts saturated chroma


def test_held_objects_are_seen_in_every_frame(clips):
    for clip, clean, degraded in clips:
        for name in ("pen", "notebook"):
            assert clean.objects[name].all() == (name in clip.objects), (name, clip.objects)
            if name == "notebook" and name in clip.objects:  # the 2-pixel pen does not survive blur + JPEG
                assert degraded.objects[name].mean() > 0.9


def test_motionless_video_shows_no_motion(clips):
    clip = clips[0][0]
    still = np.repeat(clip.frames[:1], 50, axis=0)
    measured = analyzers.analyze_video(still)
    assert analyzers.detect_motions(measured, 25.0) == set()
    assert np.ptp(measured.mouth_opening) == 0


def test_measurements_do_not_depend_on_resolution():
    small, large = (world.synthetic_example(3, seconds=1.0, height=size, width=size) for size in (64, 128))
    small, large = analyzers.analyze_video(small.frames), analyzers.analyze_video(large.frames)
    assert np.abs(small.mouth_opening - large.mouth_opening).max() < 0.1
    assert np.abs(small.head["top"] - large.head["top"]).max() < 0.01


def test_frames_of_the_wrong_shape_are_a_value_error():
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        analyzers.analyze_video(np.zeros((4, 64, 64), np.uint8))
