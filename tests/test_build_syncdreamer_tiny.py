"""training_scripts/build_syncdreamer_tiny.py on minuscule settings: data -> encoders -> cache -> training ->
a pipeline folder that loads and runs, with a tokenizer that keeps the instruction words whole."""

import json

import numpy as np
import pytest
import torch

from syncdreamer_hf.data import synthetic as world
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline

from _scripts import load_script

build = load_script("build_syncdreamer_tiny")

# 2 clips of 0.8 s (one 17-frame window each), 2 training steps, a random VAE, no evaluation
MINUSCULE = ["--num_clips", "2", "--seconds", "0.8", "--train_vae_minutes", "0", "--max_train_steps", "2",
             "--chunk_steps", "2", "--checkpointing_steps", "1", "--train_batch_size", "2", "--num_layers", "1",
             "--head_dim", "8", "--eval_clips", "0", "--final_eval_clips", "0"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    argv = [*MINUSCULE, "--work_dir", str(root / "work"), "--output", str(root / "syncdreamer-tiny")]
    state = build.main(argv)
    return root, argv, state


def test_recipe_writes_a_pipeline_that_loads_and_generates(built):
    root, _, state = built
    pipe = SyncDreamerPipeline.from_pretrained(root / "syncdreamer-tiny")
    pipe.set_progress_bar_config(disable=True)
    image = world.render_reference_image(world.sample_identity(0, "heldout"))
    audio = world.synthesize_speech(0.4, seed=0, split="heldout")
    output = pipe(image=image, audio=audio, sample_rate=16000, prompt="raise the right hand", fps=25.0,
                  num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    frames = np.asarray(output.frames[0])
    assert frames.shape[1:] == (64, 64, 3) and np.isfinite(frames).all()
    assert state["train_steps"] == 2


def test_output_folder_is_complete_safetensors_with_a_card(built):
    root, _, _ = built
    output = root / "syncdreamer-tiny"
    for name in ("transformer", "visual_adapter", "audio_dynamics_encoder", "vae", "text_encoder", "image_encoder",
                 "audio_encoder"):
        assert list((output / name).glob("*.safetensors")), name
    assert not list(output.rglob("*.bin")) and not list(output.rglob("checkpoint-*"))
    card = (output / "README.md").read_text()
    assert "random and frozen" in card and "build_syncdreamer_tiny.py" in card
    assert build.folder_megabytes(output) < 100


def test_tokenizer_keeps_instruction_words_whole(built):
    root, _, _ = built
    tokenizer = SyncDreamerPipeline.from_pretrained(root / "syncdreamer-tiny").tokenizer
    for name in world.INSTRUCTIONS:
        prompt = world.short_prompt([name], ["pen"])
        assert tokenizer.tokenize(prompt) == ["\u2581" + word for word in prompt.split()], prompt
    assert tokenizer.unk_token_id not in tokenizer("raise the left hand").input_ids


def test_rerun_skips_finished_steps(built, capsys):
    root, argv, _ = built
    before = json.loads((root / "work" / "build_state.json").read_text())
    build.main(argv)
    log = capsys.readouterr().out
    assert "1. " in log and "exists: skipped" in log and "training steps" not in log
    after = json.loads((root / "work" / "build_state.json").read_text())
    assert after["train_steps"] == before["train_steps"] == 2
