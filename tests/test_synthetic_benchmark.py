"""evaluation/benchmark.py: the ground truth scores at the ceiling; videos ignoring audio, identity or text do not."""

import json

import numpy as np
import pytest

from syncdreamer_hf.data import synthetic as world
from syncdreamer_hf.evaluation.benchmark import (
    format_benchmark_table,
    lip_sync,
    make_benchmark_cases,
    render_ground_truth_generator,
    run_synthetic_benchmark,
)

SETTINGS = {"n_clips": 6, "seconds": 3.0, "fps": 25.0, "height": 64, "width": 64, "seed": 0}


@pytest.fixture(scope="module")
def cases():
    return make_benchmark_cases(**SETTINGS)


@pytest.fixture(scope="module")
def ground_truth_results(cases):
    return run_synthetic_benchmark(render_ground_truth_generator(cases), **SETTINGS)


def test_cases_use_heldout_identities_and_ask_for_motions(cases):
    assert all(case.identity.split == "heldout" for case in cases)
    assert sum(len(case.instructions) for case in cases) >= 4
    assert any(not case.instructions for case in cases)  # clips where nothing may move
    assert all(case.image.size == (64, 64) and case.audio.shape == (48000,) for case in cases)


def test_ground_truth_scores_near_the_ceiling(ground_truth_results):
    results = ground_truth_results
    assert results["lip_sync_r"] >= 0.97 and results["lip_sync_lag_frames"] == 0
    assert results["swapped_audio_r"] < 0.4
    assert results["identity_colour_error"] < 2 / 255
    assert abs(results["identity_colour_drift"]) < 1 / 255
    assert len(results["identity_colour_error_per_window"]) == 3  # 3 s in 1 s windows
    assert results["instruction_recall"] >= 0.95 and results["no_unasked_motion"] == 1.0
    assert results["object_persistence"] in (None, 1.0)
    assert results["seconds_per_generated_second"] > 0


def test_results_are_json_and_the_table_lists_every_metric(ground_truth_results):
    assert json.loads(json.dumps(ground_truth_results))["clips"][0]["prompt"]
    table = format_benchmark_table(ground_truth_results)
    for label in ("lip-sync r", "swapped-audio r", "identity colour error", "drift", "instructed motions detected",
                  "unasked motion", "seconds per generated second"):
        assert label in table
    assert f"{ground_truth_results['lip_sync_r']:.3f}" in table


def test_shuffled_in_time_video_scores_low_lip_sync(cases):
    truth = render_ground_truth_generator(cases)
    rng = np.random.default_rng(0)
    shuffled = lambda image, audio, prompt: rng.permutation(truth(image, audio, prompt))  # noqa: E731
    results = run_synthetic_benchmark(shuffled, swapped_audio=False, **SETTINGS)
    assert abs(results["lip_sync_r"]) < 0.3


def test_audio_deaf_generator_scores_high_swapped_audio_r(cases):
    truth = render_ground_truth_generator(cases)
    by_image = {case.image.tobytes(): case.audio for case in cases}
    deaf = lambda image, audio, prompt: truth(image, by_image[image.tobytes()], prompt)  # noqa: E731
    results = run_synthetic_benchmark(deaf, **SETTINGS)
    assert results["swapped_audio_r"] > 0.9  # it moves its mouth to the clip's own audio whatever it hears


def test_video_of_another_identity_scores_a_large_colour_error(cases):
    stranger = world.sample_identity(12345, "train")

    def other_identity(image, audio, prompt):
        case = next(c for c in cases if c.image.tobytes() == image.tobytes())
        return world.render_clip(stranger, audio, case.instructions, case.objects, case.fps, seed=case.seed).frames

    results = run_synthetic_benchmark(other_identity, swapped_audio=False, **SETTINGS)
    assert results["identity_colour_error"] > 20 / 255
    assert results["lip_sync_r"] > 0.9  # only the identity is wrong


def test_motionless_video_fails_instructed_motions():
    def still(image, audio, prompt):
        return np.repeat(np.asarray(image)[None], round(len(audio) / 16000 * 25), axis=0)

    results = run_synthetic_benchmark(still, swapped_audio=False, **SETTINGS)
    assert results["instruction_recall"] == 0.0 and results["no_unasked_motion"] == 1.0
    assert abs(results["lip_sync_r"]) < 1e-6


def test_drifting_colours_show_as_drift(cases):
    truth = render_ground_truth_generator(cases)

    def fading(image, audio, prompt):
        frames = truth(image, audio, prompt).astype(np.float32)
        fade = np.linspace(0, 40, len(frames))[:, None, None, None]  # brighter and brighter
        return np.clip(frames + fade, 0, 255).astype(np.uint8)

    results = run_synthetic_benchmark(fading, swapped_audio=False, **SETTINGS)
    windows = results["identity_colour_error_per_window"]
    assert windows == sorted(windows) and results["identity_colour_drift"] > 15 / 255
    # 40 levels over 3 s, about a third of it in the colour error: a slope of a few levels per second
    assert 2 / 255 < results["identity_colour_slope_per_second"] < 14 / 255
    truth_results = run_synthetic_benchmark(truth, swapped_audio=False, **SETTINGS)
    assert abs(truth_results["identity_colour_slope_per_second"]) < 0.5 / 255


def test_lip_sync_per_window_drops_where_the_mouth_stops_following(cases):
    truth = render_ground_truth_generator(cases)

    def frozen_after_one_second(image, audio, prompt):
        frames = truth(image, audio, prompt)
        return np.concatenate([frames[:25], np.repeat(frames[24:25], len(frames) - 25, axis=0)])

    results = run_synthetic_benchmark(frozen_after_one_second, swapped_audio=False, **SETTINGS)
    first, *later = results["lip_sync_r_per_window"]
    assert len(later) == 2 and first > 0.8 and all(abs(r) < 0.2 for r in later)


def test_recordings_replace_the_synthetic_speech():
    recording = np.sin(np.arange(20000) / 30).astype(np.float32)
    short, long = make_benchmark_cases(2, seconds=2.0, speech=[recording[:8000], recording])
    np.testing.assert_array_equal(short.audio[:8000], recording[:8000])
    assert len(short.audio) == len(long.audio) == 32000 and not short.audio[8000:].any()
    np.testing.assert_array_equal(long.audio, recording[:32000] if len(recording) >= 32000 else np.pad(recording, (0, 12000)))


def test_one_clip_needs_the_swapped_audio_pass_off(cases):
    with pytest.raises(ValueError, match="swapped-audio"):
        run_synthetic_benchmark(render_ground_truth_generator(cases), n_clips=1)


def test_lip_sync_finds_the_lag():
    envelope = np.random.default_rng(0).random(100)
    late = np.concatenate([[0.5, 0.5], envelope[:-2]])  # the mouth follows 2 frames late
    result = lip_sync([late], [envelope])
    assert result["lag_frames"] == 2 and result["r"] > 0.99


def test_generator_returning_floats_is_a_value_error():
    floats = lambda image, audio, prompt: np.zeros((75, 64, 64, 3), np.float32)  # noqa: E731
    with pytest.raises(ValueError, match="uint8"):
        run_synthetic_benchmark(floats, **SETTINGS)


def test_drift_plot_draws_every_result(tmp_path, cases):
    from _scripts import load_script

    truth = render_ground_truth_generator(cases)
    results = run_synthetic_benchmark(truth, swapped_audio=False, **SETTINGS)
    paths = []
    for label in ("a", "b"):
        paths.append(tmp_path / f"{label}.json")
        paths[-1].write_text(json.dumps(results))
    output = tmp_path / "plots" / "drift.png"
    load_script("plot_drift").main(["--result", f"a={paths[0]}", "--result", f"b={paths[1]}", "--output", str(output)])
    import PIL.Image

    with PIL.Image.open(output) as image:
        assert image.format == "PNG" and image.width > 500
    with pytest.raises(SystemExit):
        load_script("plot_drift").main(["--result", "no-label", "--output", str(output)])
