"""data/synthetic.py: the avatar world renders what its parameters say, splits stay apart, datasets round-trip."""

import json
import time

import numpy as np
import pytest

from syncdreamer_hf.data import synthetic as world
from syncdreamer_hf.evaluation.synthetic import estimate_identity_colours
from syncdreamer_hf.media import load_audio, load_video


def speaking_clip(seed=0, instructions=(), objects=(), seconds=2.0, fps=25.0, size=64):
    identity = world.sample_identity(seed)
    audio = world.synthesize_speech(seconds, seed)
    return world.render_clip(identity, audio, instructions, objects, fps, height=size, width=size, seed=seed)


def test_same_seed_gives_identical_clips():
    first, second = (world.synthetic_example(7, seconds=1.0) for _ in range(2))
    assert np.array_equal(first.frames, second.frames)
    assert np.array_equal(first.audio, second.audio)
    assert all(np.array_equal(first.masks[name], second.masks[name]) for name in world.REGION_NAMES)
    assert (first.prompt, first.caption) == (second.prompt, second.caption)
    assert not np.array_equal(first.frames, world.synthetic_example(8, seconds=1.0).frames)


def test_heldout_identities_never_share_a_combination_with_training():
    def combination(identity):
        return (identity.background_name, identity.skin_name, identity.hair_name, identity.hair_style,
                identity.shirt_name, identity.eye_name, identity.face_shape)

    train = [world.sample_identity(seed, "train") for seed in range(300)]
    heldout = [world.sample_identity(seed, "heldout") for seed in range(100)]
    assert {i.split for i in train} == {"train"} and {i.split for i in heldout} == {"heldout"}
    assert not {combination(i) for i in train} & {combination(i) for i in heldout}
    assert len({combination(i) for i in heldout}) > 90  # varied, not one identity repeated


def test_heldout_audio_differs_from_training_audio():
    train, heldout = world.synthesize_speech(2.0, 3, "train"), world.synthesize_speech(2.0, 3, "heldout")
    assert train.shape == heldout.shape == (32000,)
    assert abs(np.corrcoef(train, heldout)[0, 1]) < 0.1


def test_speech_has_syllables_pauses_and_peaks():
    audio = world.synthesize_speech(4.0, 1)
    envelope = world.loudness_envelope(audio, fps=25.0)
    assert audio.dtype == np.float32 and np.abs(audio).max() <= 1.0
    assert envelope.shape == (100,)
    assert (envelope == 0).mean() > 0.1  # pauses
    assert (envelope > 0.8).mean() > 0.03  # loudness peaks
    rises = np.sum(np.diff((envelope > 0.3).astype(int)) == 1)
    assert 8 <= rises <= 30  # syllable rate about 2-7 Hz over 4 s


def test_silent_audio_closes_mouth():
    identity = world.sample_identity(2)
    clip = world.render_clip(identity, np.zeros(32000, dtype=np.float32), fps=25.0)
    assert np.all(clip.motion["mouth"] == 0) and np.all(clip.motion["brow"] == 0)
    mouth_area = clip.masks["mouth"].sum(axis=(1, 2))
    assert np.all(mouth_area == mouth_area[0]) and mouth_area[0] < 16  # a thin closed line


def test_mouth_opens_with_loudness_and_covers_a_visible_patch():
    clip = speaking_clip(seed=4, seconds=3.0)
    mouth_area = clip.masks["mouth"].sum(axis=(1, 2))
    envelope = world.loudness_envelope(clip.audio, clip.fps, len(clip.frames))
    assert np.corrcoef(mouth_area, envelope)[0, 1] > 0.95
    assert mouth_area.max() >= 45  # pixels at 64x64 when fully open


def test_eyebrows_rise_on_loudness_peaks():
    clip = speaking_clip(seed=5, seconds=4.0)
    brow, mouth = clip.motion["brow"], clip.motion["mouth"]
    assert brow.max() > 0.5 and np.all(brow[mouth > 0.95] > 0.7)
    assert (brow < 0.05).mean() > 0.3  # quiet stretches keep them down


@pytest.mark.parametrize("instruction, side", [("raise_right_hand", "right"), ("wave_left_hand", "left")])
def test_raised_hand_is_large_and_on_the_avatars_side(instruction, side):
    clip = speaking_clip(seed=6, instructions=[instruction], seconds=3.0)
    hands = clip.masks["hands"]
    assert hands[0].sum() == 0  # at rest the hands are out of the frame
    raised = hands[clip.motion[f"raise_{side}"] > 0.99]
    hand_columns = np.nonzero(raised.any(axis=(0, 1)))[0]
    assert raised.sum(axis=(1, 2)).min() >= 60  # pixels of the hand at 64x64
    assert (hand_columns.mean() < 32) == (side == "right")  # the avatar's right hand is on the image's left


def test_instructions_move_what_they_name():
    clip = speaking_clip(seed=1, instructions=["turn_head_left", "look_up"], seconds=3.0)
    assert clip.motion["yaw"].max() == pytest.approx(1.0) and clip.motion["gaze_y"].max() == pytest.approx(1.0)
    for key in ("pitch", "gaze_x", "raise_left", "raise_right", "wave_left", "wave_right"):
        assert np.all(clip.motion[key] == 0)
    turned = clip.motion["yaw"] > 0.99
    mouth_x = lambda masks: np.nonzero(masks.any(axis=(0, 1)))[0].mean()  # noqa: E731
    assert mouth_x(clip.masks["mouth"][turned]) > mouth_x(clip.masks["mouth"][:2]) + 2  # towards the image right


def test_masks_cover_every_region():
    clip = speaking_clip(seed=3, instructions=["raise_left_hand"], seconds=2.0)
    raised = int(np.argmax(clip.motion["raise_left"]))
    areas = {name: clip.masks[name][raised].sum() for name in world.REGION_NAMES}
    assert all(areas[name] >= 8 for name in world.REGION_NAMES), areas
    assert not (clip.masks["mouth"] & clip.masks["jaw"]).any()  # visible regions do not overlap here


def test_held_objects_persist_in_every_frame():
    clip = speaking_clip(seed=2, instructions=["raise_right_hand"], objects=["pen", "notebook"], seconds=2.0)
    pen = np.all(np.abs(clip.frames.astype(int) - world.PEN_COLOUR) < 3, axis=-1).sum(axis=(1, 2))
    notebook = np.all(np.abs(clip.frames.astype(int) - world.NOTEBOOK_COLOUR) < 3, axis=-1).sum(axis=(1, 2))
    assert pen.min() >= 5 and notebook.min() >= 30


def test_prompt_and_caption_describe_the_clip():
    identity = world.sample_identity(0)
    clip = world.render_clip(identity, np.zeros(8000, np.float32), ["raise_right_hand", "look_up"], ["pen"])
    assert clip.prompt == "raise the right hand and look up while holding a pen"
    assert clip.caption.startswith(f"A person with {identity.skin_name} skin, ")
    assert f"shirt on a {identity.background_name} background raises the right hand and looks up while talking" \
        in clip.caption
    assert clip.caption.endswith(", holding a pen in the right hand.")
    assert world.short_prompt([]) == "talk to the camera"


def test_unknown_instruction_is_a_value_error():
    with pytest.raises(ValueError, match="unknown instructions"):
        world.render_clip(world.sample_identity(0), np.zeros(8000, np.float32), ["juggle"])
    with pytest.raises(ValueError, match="split"):
        world.sample_identity(0, "test")


def test_rendering_is_fast():
    clip = speaking_clip(seed=0, seconds=2.0)  # warm-up
    start = time.perf_counter()
    world.render_frames(clip.identity, clip.motion, height=64, width=64)
    assert time.perf_counter() - start < 1.0  # 50 frames at 64x64


def test_renders_any_size_with_the_same_layout():
    small, large = (speaking_clip(seed=9, instructions=["raise_right_hand"], seconds=1.0, size=s) for s in (64, 256))
    assert large.frames.shape == (25, 256, 256, 3)
    for name in world.REGION_NAMES:
        assert large.masks[name].sum() / 16 == pytest.approx(small.masks[name].sum(), rel=0.25, abs=8)


def test_written_dataset_round_trips(tmp_path):
    out = world.write_clip_dataset(tmp_path / "data", n_clips=2, seconds=2.0, fps=12.5, split="heldout", seed=3)
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for index, record in enumerate(records):
        assert record["file_name"] == f"clip_{index:05d}.mp4" and record["masks"] == f"clip_{index:05d}_masks.npz"
        keys = {"caption", "prompt", "attributes", "identity", "instructions", "fps", "num_frames", "seed"}
        assert keys <= set(record)
        assert set(record["attributes"]) >= {"clothing", "background", "objects", "body_pose", "implicit_actions"}
        frames, fps = load_video(out / record["file_name"])
        assert frames.shape == (25, 64, 64, 3) and record["num_frames"] == 25
        assert fps == pytest.approx(12.5) and record["fps"] == 12.5
        assert len(load_audio(out / record["file_name"])) / 16000 == pytest.approx(2.0, abs=0.1)
        masks = np.load(out / record["masks"])
        assert set(masks.files) == set(world.REGION_NAMES) and masks["mouth"].shape == (25, 64, 64)
        colours = estimate_identity_colours(frames)
        for name, value in colours.items():  # colours survive H.264
            assert np.abs(value.mean(0) - record["identity"][name]).max() < 6, name
        expected = world.synthetic_example(record["seed"], "heldout", 2.0, 12.5)
        assert record["caption"] == expected.caption and record["identity"] == expected.identity.to_dict()


def test_side_twin_of_a_clip_is_its_mirror_image():
    instructions = ["turn_head_left", "raise_right_hand", "look_left"]
    assert world.mirrored_instructions(instructions) == ["turn_head_right", "raise_left_hand", "look_right"]
    assert world.mirrored_instructions(["nod", "look_up"]) == ["nod", "look_up"]
    clip = speaking_clip(seed=5, instructions=instructions, seconds=1.0)
    twin = speaking_clip(seed=5, instructions=world.mirrored_instructions(instructions), seconds=1.0)
    np.testing.assert_array_equal(twin.frames, clip.frames[:, :, ::-1])
    assert twin.motion["raise_left"].max() == 1 and twin.motion["raise_right"].max() == 0


def test_written_dataset_adds_side_twins_after_sided_clips(tmp_path):
    out = world.write_clip_dataset(tmp_path / "data", n_clips=6, seconds=0.4, side_twins=True)
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    originals = [record for record in records if not record["file_name"].endswith("_twin.mp4")]
    assert [record["file_name"] for record in originals] == [f"clip_{index:05d}.mp4" for index in range(6)]
    sided = [record for record in originals if world.mirrored_instructions(record["instructions"]) != record["instructions"]]
    assert 0 < len(sided) < 6, "seed 0 should draw clips with and without a side"
    assert len(records) == 6 + len(sided)
    for position, record in enumerate(records):
        if record in sided:
            twin = records[position + 1]
            assert twin["file_name"] == record["file_name"].replace(".mp4", "_twin.mp4")
            assert twin["instructions"] == world.mirrored_instructions(record["instructions"])
            assert (twin["seed"], twin["identity"], twin["objects"]) == (record["seed"], record["identity"], record["objects"])
            np.testing.assert_array_equal(load_audio(out / twin["file_name"]), load_audio(out / record["file_name"]))
