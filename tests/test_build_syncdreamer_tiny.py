"""training_scripts/build_syncdreamer_tiny.py on minuscule settings: data -> encoders -> cache -> training ->
a pipeline folder that loads and runs, with a tokenizer that keeps the instruction words whole."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from syncdreamer_hf.data import synthetic as world
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline

from _scripts import load_script

build = load_script("build_syncdreamer_tiny")

# 2 clips of 0.8 s (one 17-frame window each), 2 training steps (the text encoder too), a random VAE, a Wav2Vec2
# pretrained for 3 steps, no evaluation
MINUSCULE = ["--num_clips", "2", "--seconds", "0.8", "--train_vae_minutes", "0", "--max_train_steps", "2",
             "--chunk_steps", "2", "--checkpointing_steps", "1", "--train_batch_size", "2", "--num_layers", "1",
             "--head_dim", "8", "--eval_clips", "0", "--final_eval_clips", "0", "--pretrain_audio_steps", "3",
             "--pretrain_audio_clips", "4", "--train_text_encoder"]


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
    assert "pretrained here, then frozen: `audio_encoder`" in card and "`text_encoder`" in card.split("trained here")[1]
    assert build.folder_megabytes(output) < 100


def test_the_pipeline_gets_the_pretrained_wav2vec2_and_the_trained_text_encoder(built):
    """Step 2b's encoder is the shipped `audio_encoder` (its probe recorded); the text encoder trained."""
    root, _, state = built
    output, work = root / "syncdreamer-tiny", root / "work"
    shipped = load_file(output / "audio_encoder" / "model.safetensors")
    pretrained = load_file(work / "audio_encoder" / "model.safetensors")
    assert shipped.keys() == pretrained.keys() and all(torch.equal(shipped[k], pretrained[k]) for k in shipped)
    probe = state["audio_encoder_probe"]
    assert 0 < probe["probe_r_after"]["heldout_world_speech"] <= 1 and probe["args"]["max_train_steps"] == 3
    initial = load_file(work / "init_pipeline" / "text_encoder" / "model.safetensors")
    trained = load_file(output / "text_encoder" / "model.safetensors")
    assert any(not torch.equal(initial[k], trained[k]) for k in trained)


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


def test_ablation_rows_share_the_build_and_write_one_table(built, tmp_path):
    root, _, _ = built
    ablate = load_script("ablate")
    card = tmp_path / "README.md"
    card.write_text("# SyncDreamer-Tiny\n\nweights\n\n## Ablation\n\nan older table\n")
    argv = ["--build_dir", str(root / "work"), "--work_dir", str(tmp_path), "--max_train_steps", "1",
            "--rows", "full", "no_visual_adapter", "--inference_steps", "2", "--eval_clips", "2",
            "--eval_seconds", "0.2", "--eval_steps", "1", "--card", str(card)]
    rows = ablate.main(argv)
    assert [row["row"] for row in rows] == ["full", "full, 2 inference steps",
                                            'full, minimal prompt "talk to the camera"', "no_visual_adapter"]
    variant = SyncDreamerPipeline.from_pretrained(tmp_path / "no_visual_adapter" / "train")
    assert variant.visual_adapter.config.raw_image_tokens and variant.visual_adapter.config.query_regions == []
    assert "--lambda_loc" in rows[0]["train_command"] and "--num-inference-steps 2" in rows[1]["eval_command"]
    minimal = json.loads((tmp_path / "full" / "eval_minimal_prompt.json").read_text())
    assert minimal["generation"]["prompt"] == "talk to the camera"
    assert all(0 <= row["no_unasked_motion"] <= 1 for row in rows)
    table = (tmp_path / "ablation.md").read_text()
    assert table.count("\n| ") == 1 + len(rows) and "no_visual_adapter" in table
    text = card.read_text()  # the card's section is replaced, with the command that wrote it
    assert text.startswith("# SyncDreamer-Tiny\n\nweights\n\n## Ablation") and "older" not in text
    assert table in text and "python training_scripts/ablate.py --build_dir" in text
    # a rerun trains and evaluates nothing again
    mtime = (tmp_path / "full" / "eval.json").stat().st_mtime
    assert ablate.main(argv) == rows and (tmp_path / "full" / "eval.json").stat().st_mtime == mtime


def test_ablation_seeds_and_the_no_sink_row(built, tmp_path):
    root, _, _ = built
    ablate = load_script("ablate")
    argv = ["--build_dir", str(root / "work"), "--work_dir", str(tmp_path), "--max_train_steps", "1",
            "--rows", "no_reference_sink", "--seeds", "0", "1", "--eval_clips", "1", "--eval_seconds", "0.2",
            "--eval_steps", "1", "--no_swapped_audio"]
    rows = ablate.main(argv)
    assert [(row["row"], row["seed"]) for row in rows] == [("no_reference_sink", 0), ("no_reference_sink", 1)]
    assert all("--reference_sink" not in row["train_command"] and "--no-swapped-audio" in row["eval_command"]
               for row in rows)
    assert "--seed 1" in rows[1]["train_command"]
    for seed in (0, 1):  # the trained row's pipeline keeps the row's window condition
        saved = SyncDreamerPipeline.load_config(tmp_path / f"no_reference_sink-seed{seed}" / "train")
        assert saved["reference_sink"] is False
    assert SyncDreamerPipeline.load_config(root / "work" / "init_pipeline")["reference_sink"] is True
    table = (tmp_path / "ablation.md").read_text()
    line = next(line for line in table.splitlines() if line.startswith("| no_reference_sink"))
    assert line.count("..") >= 1 and table.count("\n| ") == 2  # one line for both seeds: mean (min..max)


def test_schedule_and_guidance_settings_reach_the_commands_and_the_config(built, tmp_path):
    """A chunk's training command schedules the learning rate over the whole build; `--guidance_end` and
    `--mirrored_negative_prompt` go into the shipped config and every evaluation."""
    root, argv, _ = built
    args = build.parse_args([*argv, "--lr_scheduler", "cosine", "--max_train_steps", "40", "--guidance_end", "0.5"])
    command = " ".join(build.train_command(args, root / "work" / "init_pipeline", tmp_path, tmp_path / "run", 20))
    assert "--lr_scheduler cosine" in command and "--lr_schedule_steps 40" in command
    assert "--max_train_steps 20" in command  # this chunk ends at step 20
    evaluate = " ".join(build.evaluate_command(tmp_path, tmp_path / "eval.json", 1, 1.0, 2, args))
    assert "--guidance-end 0.5" in evaluate and evaluate.endswith("--no-mirrored-negative-prompt")
    assert build.sampling_defaults(args)["default_guidance_end"] == 0.5
    assert build.sampling_defaults(args)["default_mirrored_negative_prompt"] is False
    mirrored = build.parse_args([*argv, "--mirrored_negative_prompt"])
    assert build.sampling_defaults(mirrored)["default_mirrored_negative_prompt"] is True
    assert build.evaluate_command(tmp_path, tmp_path / "eval.json", 1, 1.0, 2, mirrored)[-1] == "--mirrored-negative-prompt"


def test_warm_start_adds_a_zero_position_embedding(built, tmp_path):
    """`--init_pipeline` with `--position_embedding`: the warm start's transformer gets the embedding at zero and
    otherwise the init pipeline's weights (it generates the same video)."""
    root, argv, _ = built
    shipped = root / "syncdreamer-tiny"
    args = build.parse_args([*argv, "--init_pipeline", str(shipped), "--position_embedding"])
    build.warm_start_pipeline(args, tmp_path / "init")
    before = SyncDreamerPipeline.from_pretrained(shipped).transformer
    after = SyncDreamerPipeline.from_pretrained(tmp_path / "init").transformer
    assert before.config.position_embedding_grid is None and after.config.position_embedding_grid == [8, 8]
    assert not after.position_embedding.embedding.any()
    weights = after.state_dict()
    assert all(torch.equal(weights[name], value) for name, value in before.state_dict().items())


def test_the_warm_start_prompt_enhancer_folder_is_kept_as_it_is(built, tmp_path):
    """What the build writes replaces its re-saved `prompt_enhancer/` by the init pipeline's, card and all."""
    _, argv, _ = built
    init, output = tmp_path / "init", tmp_path / "output"
    (init / "prompt_enhancer").mkdir(parents=True)
    (init / "prompt_enhancer" / "README.md").write_text("the enhancer build's card")
    (output / "prompt_enhancer").mkdir(parents=True)
    (output / "prompt_enhancer" / "README.md").write_text("a generic card")
    (output / "prompt_enhancer" / "extra.json").write_text("{}")
    build.keep_init_prompt_enhancer(build.parse_args([*argv, "--init_pipeline", str(init)]), output)
    assert [path.name for path in (output / "prompt_enhancer").iterdir()] == ["README.md"]
    assert (output / "prompt_enhancer" / "README.md").read_text() == "the enhancer build's card"
    build.keep_init_prompt_enhancer(build.parse_args(argv), tmp_path / "from_scratch")  # no warm start: nothing to keep
    assert not (tmp_path / "from_scratch").exists()


def test_the_shipped_configs_name_the_output_folder(built):
    """Every `_name_or_path` of the output names the output folder (not the work folder it was trained in), and no
    tokenizer config keeps `local_files_only`."""
    root, _, _ = built
    output = root / "syncdreamer-tiny"
    names = {}
    for path in output.rglob("*.json"):
        config = json.loads(path.read_text())
        if isinstance(config, dict):
            assert "local_files_only" not in config, path
            if "_name_or_path" in config:
                names[str(path.relative_to(output))] = config["_name_or_path"]
    assert names["model_index.json"] == str(output)
    assert names["transformer/config.json"] == str(output / "transformer")
    assert all(name.startswith(str(output)) for name in names.values()), names


def test_final_benchmark_reruns_only_when_its_command_changes(built, tmp_path, monkeypatch):
    """A finished build run again with other sampling settings benchmarks its output again (the card must not show
    figures of other settings); run again unchanged, it does not."""
    import shutil

    root, argv, _ = built
    shutil.copytree(root / "work", tmp_path / "work", symlinks=True)
    commands = []

    def fake_evaluate(command, output, rerun=True):
        commands.append(build.shown(command))
        return {"command": build.shown(command), "wall_seconds": 0.0, "lip_sync_r": 0.5}

    monkeypatch.setattr(build, "evaluate", fake_evaluate)
    argv = [*argv, "--work_dir", str(tmp_path / "work"), "--output", str(tmp_path / "out"), "--final_eval_clips", "1"]
    build.main(argv)
    build.main(argv)
    assert len(commands) == 1 and "--audio-guidance-scale 2.5" in commands[0]
    state = build.main([*argv, "--audio_guidance_scale", "1.5"])
    assert len(commands) == 2 and "--audio-guidance-scale 1.5" in commands[1]
    assert [row["command"] for row in state["evaluations"] if row.get("final")] == commands[1:]
    assert json.loads((tmp_path / "out" / "model_index.json").read_text())["default_audio_guidance_scale"] == 1.5
