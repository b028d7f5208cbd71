"""`syncdreamer preprocess`: synthetic clips -> latent cache that matches the pipeline's own encoders; a corrupt
clip is skipped with a message; a rerun does no new work; the cache trains."""

import json

import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from _training_fixtures import save_tiny_pipeline
from syncdreamer_hf.data.latent_cache import CACHE_INFO_FILE, CachedWindowDataset, collate_windows
from syncdreamer_hf.data.preprocess import (
    main,
    masks_to_token_grid,
    preprocess_dataset,
    resample_indices,
)
from syncdreamer_hf.data.synthetic import write_clip_dataset
from syncdreamer_hf.media import load_audio, load_video
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline

SETTINGS = ["--height", "32", "--width", "32", "--num-frames", "9", "--max-sequence-length", "16", "--fps", "25"]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = write_clip_dataset(tmp_path_factory.mktemp("clips"), 3, seconds=0.8, height=64, width=48)
    (root / "clip_00001.mp4").write_bytes(b"\x00not an mp4" * 50)  # corrupt
    return root


@pytest.fixture(scope="module")
def cache(clips, pipeline_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("cache")
    assert main([str(clips), "--model", str(pipeline_dir), "--output", str(output), *SETTINGS]) == 0
    return output


def test_corrupt_clip_is_skipped_with_a_message_and_a_rerun_does_no_work(clips, pipeline_dir, tmp_path, capsys):
    argv = [str(clips), "--model", str(pipeline_dir), "--output", str(tmp_path / "c"), *SETTINGS]
    assert main(argv) == 0
    first = capsys.readouterr()
    assert "skipping clip_00001.mp4: could not decode video file" in first.err
    assert "2 clips processed (4 windows), 0 already done, 1 failed" in first.out
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "c").rglob("*") if p.is_file()}
    assert len([p for p in written if p.parent.name == "windows"]) == 4

    assert main(argv) == 0
    second = capsys.readouterr()
    assert "0 clips processed (0 windows), 3 already done, 0 failed" in second.out and "skipping" not in second.err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "c").rglob("*") if p.is_file()} == written
    assert not list((tmp_path / "c").rglob("*.tmp"))  # atomic writes leave no temporary files


def test_a_changed_clip_is_processed_again(clips, pipeline_dir, tmp_path):
    import shutil

    root = shutil.copytree(clips, tmp_path / "clips")
    kwargs = dict(height=32, width=32, num_frames=9, max_sequence_length=16, pipe=None)
    first = preprocess_dataset(root, pipeline_dir, tmp_path / "c", **kwargs)
    shutil.copy(root / "clip_00000.mp4", root / "clip_00001.mp4")  # the corrupt clip gets fixed
    second = preprocess_dataset(root, pipeline_dir, tmp_path / "c", **kwargs)
    assert (first["processed"], len(first["failed"])) == (2, 1)
    assert (second["processed"], second["skipped"], second["failed"]) == (1, 2, [])
    with pytest.raises(ValueError, match="other settings \\(height\\)"):
        preprocess_dataset(root, pipeline_dir, tmp_path / "c", **{**kwargs, "height": 48})


def test_cached_tensors_match_the_pipeline_encoders(cache, clips, pipeline_dir):
    pipe = SyncDreamerPipeline.from_pretrained(pipeline_dir)
    window = load_file(cache / "windows" / "clip_00002_w001.safetensors")
    assert window["latents"].shape == (16, 3, 4, 4) and window["region_masks"].shape == (5, 3, 2, 2)
    assert window["audio_hidden_states"].shape[:1] == (3,) and window["image_embeds"].shape == (17, 32)

    frames, fps = load_video(clips / "clip_00002.mp4")  # 48x64 -> cover 32x32 -> centre crop
    first_frame = PIL.Image.fromarray(frames[resample_indices(len(frames), fps, 25)[9]])
    with torch.no_grad():
        # latent frame 0 is the VAE encoding of the window's first frame alone (the Wan VAE is causal): exactly
        # what the pipeline's reference conditioning holds for that frame as the reference image
        reference = pipe.encode_reference([first_frame], 32, 32, "cpu")[0, :, 0]
        torch.testing.assert_close(window["latents"][:, 0], reference, atol=1e-5, rtol=1e-5)
        # the cached audio states through the audio dynamics encoder are the pipeline's encode_audio
        expected = pipe.encode_audio(load_audio(clips / "clip_00002.mp4"), 25, 9, 9, "cpu")
        actual = pipe.audio_dynamics_encoder(window["audio_hidden_states"][None], 9).audio_embeds
        torch.testing.assert_close(actual, expected)
    text = load_file(cache / "windows" / "clip_00002_w001.safetensors")["prompt_embeds"]
    with torch.no_grad():
        full, _ = pipe.encode_prompt(json.loads((clips / "metadata.jsonl").read_text().splitlines()[2])["caption"],
                                     do_classifier_free_guidance=False, max_sequence_length=16, device="cpu")
    torch.testing.assert_close(torch.cat([text, torch.zeros(16 - len(text), 32)]), full[0])


def test_masks_reach_the_token_grid(cache):
    masks = torch.zeros(1, 9, 32, 32)
    masks[0, 5, 20, 3] = 1  # one pixel, frame 5 -> latent frame 2 (frames 5..8), token row 1, column 0
    grid = masks_to_token_grid(masks, (3, 2, 2))
    assert grid.sum() == 1 and grid[0, 2, 1, 0] == 1
    # without temporal compression (a tiny VAE with scale_factor_temporal=1) each frame is its own latent frame
    grid = masks_to_token_grid(masks, (9, 2, 2), temporal_stride=1)
    assert grid.sum() == 1 and grid[0, 5, 1, 0] == 1
    mouth = load_file(cache / "windows" / "clip_00000_w000.safetensors")["region_masks"][1]
    assert 0 < mouth.sum() < mouth.numel()  # the mouth covers part of the face, not all of it


def test_cache_loads_for_training(cache):
    dataset = CachedWindowDataset(cache)
    assert len(dataset) == 4 and dataset.info["num_frames"] == 9
    batch = collate_windows([dataset[0], dataset[3]], 16, 5)
    assert batch["prompt_embeds"].shape == (2, 16, 32) and batch["region_masks"].shape == (2, 5, 3, 2, 2)
    assert batch["audio_hidden_states"].shape[:2] == (2, 3) and batch["has_masks"].tolist() == [1.0, 1.0]


def test_only_the_encoders_are_loaded_and_the_patch_size_comes_from_the_config(clips, pipeline_dir, cache, tmp_path):
    """A pipeline folder without the weights of the transformer, the visual adapter and the audio dynamics encoder
    (their configs kept) preprocesses to the same cache: those models are never loaded."""
    import shutil

    encoders_only = tmp_path / "encoders-only"
    shutil.copytree(pipeline_dir, encoders_only)
    for name in ("transformer", "visual_adapter", "audio_dynamics_encoder"):
        for weights in (encoders_only / name).glob("*.safetensors"):
            weights.unlink()
    config = json.loads((encoders_only / "transformer" / "config.json").read_text())
    output = tmp_path / "cache"
    assert main([str(clips), "--model", str(encoders_only), "--output", str(output), *SETTINGS]) == 0
    info = json.loads((output / CACHE_INFO_FILE).read_text())
    assert info["patch_size"] == config["patch_size"] == json.loads((cache / CACHE_INFO_FILE).read_text())["patch_size"]
    for name in ("clip_00000_w000.safetensors", "clip_00002_w001.safetensors"):
        expected, actual = load_file(cache / "windows" / name), load_file(output / "windows" / name)
        assert expected.keys() == actual.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)
