"""`syncdreamer generate`: the main job on the bundled pipeline and examples, and one-line errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import av
import pytest

from syncdreamer_hf.cli import DEFAULT_MODEL, main

REPO = Path(__file__).resolve().parents[1]
IMAGE, AUDIO = str(REPO / "examples" / "reference.png"), str(REPO / "examples" / "speech.wav")


def test_generate_writes_mp4_with_all_frames_and_the_audio(tmp_path):
    """The README's main-job command, as a user runs it (console script in a fresh process)."""
    output = tmp_path / "avatar.mp4"
    command = [sys.executable, "-m", "syncdreamer_hf.cli", "generate", "--image", IMAGE, "--audio", AUDIO,
               "--prompt", "a person talks", "--output", str(output), "--num-inference-steps", "2"]
    result = subprocess.run(command, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert "100 frames" in result.stdout  # examples/speech.wav lasts 4.0 s: 4.0 x 25 fps
    with av.open(str(output)) as container:
        assert sum(1 for _ in container.decode(container.streams.video[0])) == 100
        sound = container.streams.audio[0]
        assert abs(float(sound.duration * sound.time_base) - 4.0) <= 1 / 25
    assert DEFAULT_MODEL.is_dir()


def run(capsys, *args) -> tuple[int, str]:
    code = main(["generate", "--prompt", "a person talks", "--num-inference-steps", "1", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--image", "missing.png", "--audio", AUDIO, "--output", "o.mp4"], "does not exist"),
        (["--image", __file__, "--audio", AUDIO, "--output", "o.mp4"], "not an image"),
        (["--image", IMAGE, "--audio", "missing.wav", "--output", "o.mp4"], "does not exist"),
        (["--image", IMAGE, "--audio", IMAGE, "--output", "o.mp4"], "no audio track"),
        (["--image", IMAGE, "--audio", AUDIO, "--output", "o.mp4", "--height", "36"], "multiples of 8"),
        (["--image", IMAGE, "--audio", AUDIO, "--output", "o.mp4", "--fps", "0"], "fps"),
        (["--image", IMAGE, "--audio", AUDIO, "--output", "o.mp4", "--num-inference-steps", "0"], "positive"),
        (["--image", IMAGE, "--audio", AUDIO, "--output", "o.mp4", "--guidance-scale", "-2"], ">= 0"),
        (["--image", IMAGE, "--audio", AUDIO, "--output", "o.mp4", "--model", "no/such-dir/x"], "not found"),
        (["--image", IMAGE, "--audio", AUDIO, "--output", "o.mp4", "--device", "gpu9"], "--device"),
        (["--image", IMAGE, "--audio", AUDIO, "--output", "o.avi"], "mp4"),
        (["--image", IMAGE, "--audio", AUDIO, "--output", "o.mp4", "--negative-prompt", "nod",
          "--mirrored-negative-prompt"], "mirrored_negative_prompt"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("syncdreamer generate: error:") and message in err
    assert "Traceback" not in err


def test_missing_required_argument_is_argparse_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--image", IMAGE])
    assert exit_info.value.code == 2 and "--audio" in capsys.readouterr().err


def test_evaluate_synthetic_scores_the_pipeline_and_writes_json(tmp_path, capsys):
    output = tmp_path / "results.json"
    code = main(["evaluate", "synthetic", "--clips", "2", "--seconds", "0.4", "--size", "32",
                 "--num-inference-steps", "1", "--output", str(output)])
    printed = capsys.readouterr().out
    assert code == 0
    results = json.loads(output.read_text())
    assert results["settings"]["n_clips"] == 2 and len(results["clips"]) == 2
    assert all(clip["num_frames"] == 10 for clip in results["clips"])  # round(0.4 s x 25 fps) frames generated
    assert -1 <= results["lip_sync_r"] <= 1 and results["seconds_per_generated_second"] > 0
    assert "| lip-sync r (higher is better) |" in printed and f"{results['lip_sync_r']:.3f}" in printed


def test_evaluate_unknown_model_is_one_line(capsys):
    assert main(["evaluate", "synthetic", "--model", "no/such/folder", "--clips", "1"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
