"""training_scripts/distill_syncdreamer.py on tiny components: the teacher's targets are the pipeline's own windows,
a few distillation steps lower the student's loss, and the saved student loads and runs one transformer pass per
step with its own sampling defaults."""

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers import UniPCMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from _scripts import load_script
from _training_fixtures import FPS, HEIGHT, MAX_SEQUENCE_LENGTH, NUM_FRAMES, WIDTH, write_random_cache
from syncdreamer_hf.data.latent_cache import CachedWindowDataset
from syncdreamer_hf.media import load_image
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline
from syncdreamer_hf.tiny import TINY_PIPELINE_CONFIG, build_tiny_components
from syncdreamer_hf.training import SyncDreamerTrainingModule

distill = load_script("distill_syncdreamer")
REPO = Path(__file__).resolve().parents[1]

TEACHER_CONFIG = {
    **TINY_PIPELINE_CONFIG,
    "num_motion_frames": 8,
    "default_max_sequence_length": MAX_SEQUENCE_LENGTH,
    "default_num_inference_steps": 3,
    "default_guidance_scale": 2.0,
    "default_audio_guidance_scale": 2.5,
    "reference_sink": True,
}


def tiny_teacher(**config) -> SyncDreamerPipeline:
    pipe = SyncDreamerPipeline(**build_tiny_components(seed=0), **{**TEACHER_CONFIG, **config})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("teacher")
    tiny_teacher().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return write_random_cache(tmp_path_factory.mktemp("cache"), num_windows=4)


def run_distillation(teacher_dir, cache_dir, output_dir, *extra):
    AcceleratorState._reset_state(True)
    try:
        distill.main(
            [
                "--pretrained_model_name_or_path",
                str(teacher_dir),
                "--cache_dir",
                str(cache_dir),
                "--output_dir",
                str(output_dir),
                "--num_pairs",
                "4",
                "--pair_batch_size",
                "3",
                "--train_batch_size",
                "4",
                "--learning_rate",
                "2e-3",
                "--region_weights",
                "mouth=20",
                "--report_to",
                "none",
                *extra,
            ]
        )
    finally:
        AcceleratorState._reset_state(True)


@pytest.fixture(scope="module")
def student_dir(teacher_dir, cache_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("student")
    run_distillation(
        teacher_dir,
        cache_dir,
        output_dir,
        "--max_train_steps",
        "30",
        "--student_steps",
        "1",
        "2",
        "4",
        "--motion_condition_prob",
        "0.5",
    )
    return output_dir


def count_transformer_passes(pipe) -> list[int]:
    """Records the batch size of every transformer call."""
    batch_sizes = []
    pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: batch_sizes.append(len(kwargs["hidden_states"])), with_kwargs=True
    )
    return batch_sizes


@pytest.mark.parametrize("guidance", [(2.0, 2.5, 1.0), (1.0, 3.0, 1.0), (4.0, 1.0, 1.0), (6.0, 2.5, 0.5)])
@pytest.mark.parametrize("reference_sink", [True, False])
def test_teacher_sample_is_the_pipelines_window(guidance, reference_sink):
    """The teacher's target for a window is exactly what the pipeline generates for it: same conditioning
    (reference sink, known frame, padded prompt), same guidance passes (text guidance in the first `guidance_end`
    of the steps) and scheduler, same noise."""
    guidance_scale, audio_guidance_scale, guidance_end = guidance
    pipe = tiny_teacher(reference_sink=reference_sink)
    image = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    audio = np.random.default_rng(1).standard_normal(round(NUM_FRAMES / FPS * 16000)).astype(np.float32) * 0.1
    expected = pipe(
        image=image,
        audio=audio,
        sample_rate=16000,
        prompt="a person talks",
        fps=FPS,
        num_frames=NUM_FRAMES,
        guidance_scale=guidance_scale,
        audio_guidance_scale=audio_guidance_scale,
        guidance_end=guidance_end,
        output_type="latent",
        generator=torch.Generator().manual_seed(7),
    ).frames

    images = [load_image(image)]
    prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(
        "a person talks", None, True, max_sequence_length=MAX_SEQUENCE_LENGTH
    )
    reference = pipe.encode_reference(images, HEIGHT, WIDTH, "cpu")  # (1, 16, 1, h, w)
    num_latent_frames = expected.shape[2]
    latents = torch.cat([reference, torch.zeros_like(reference).repeat(1, 1, num_latent_frames - 1, 1, 1)], dim=2)
    condition = distill.window_condition(
        latents, reference if reference_sink else None, 1, 0.0, torch.Generator().manual_seed(0)
    )
    noise = randn_tensor((1, 16, *condition.shape[2:]), generator=torch.Generator().manual_seed(7))
    teacher = SyncDreamerTrainingModule(pipe.transformer, pipe.visual_adapter, pipe.audio_dynamics_encoder)
    sample = distill.teacher_sample(
        teacher,
        copy.deepcopy(pipe.scheduler),
        noise,
        condition,
        TEACHER_CONFIG["default_num_inference_steps"],
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        image_embeds=pipe.encode_image_hidden_states(images, "cpu"),
        audio_hidden_states=pipe.encode_audio_hidden_states(audio, FPS, 0, NUM_FRAMES, "cpu"),
        guidance_scale=guidance_scale,
        audio_guidance_scale=audio_guidance_scale,
        guidance_end=guidance_end,
        num_sink_frames=int(reference_sink),
    )
    torch.testing.assert_close(sample[:, :, int(reference_sink) :], expected, atol=1e-5, rtol=1e-5)


def test_pairs_are_conditioned_as_the_pipelines_windows(cache_dir, student_dir):
    """Each pair knows the reference sink, then the window's first frame or its carried motion latents (mask 1),
    and nothing after them."""
    windows = CachedWindowDataset(cache_dir)
    pairs = distill.TeacherPairDataset(student_dir / distill.PAIRS_DIR, windows)
    assert len(pairs) == 4
    known_counts = set()
    for pair in pairs:
        mask, known = pair["condition"][:4], pair["condition"][4:]  # (4, 1 + T, h, w), (16, 1 + T, h, w)
        num_known = int(mask[0, :, 0, 0].sum()) - 1
        known_counts.add(num_known)
        assert mask[:, : 1 + num_known].eq(1).all() and mask[:, 1 + num_known :].eq(0).all()
        torch.testing.assert_close(known[:, :1], pair["reference_latents"])
        torch.testing.assert_close(known[:, 1 : 1 + num_known], pair["latents"][:, :num_known])
        assert known[:, 1 + num_known :].eq(0).all()
        assert pair["noise"].shape == pair["teacher_latents"].shape == (16, 1 + pair["latents"].shape[1], 4, 4)
    assert known_counts == {1, 2}  # the first frame, or the 8 carried motion frames (2 latent frames)


def test_distillation_changes_the_student_and_lowers_its_loss(teacher_dir, cache_dir, student_dir):
    windows = CachedWindowDataset(cache_dir)
    pairs = distill.TeacherPairDataset(student_dir / distill.PAIRS_DIR, windows)
    batch = distill.collate_pairs(list(pairs), MAX_SEQUENCE_LENGTH, len(windows.region_names))
    scheduler = UniPCMultistepScheduler.from_pretrained(student_dir, subfolder="scheduler")
    sigmas, timesteps = distill.schedule_points(scheduler, [1, 2, 4])

    def loss(pipeline_dir):
        module = SyncDreamerTrainingModule.from_pretrained(pipeline_dir).eval()
        with torch.no_grad():
            return distill.distillation_loss(
                module,
                batch,
                sigmas,
                timesteps,
                torch.Generator().manual_seed(0),
                windows.region_names,
                {"mouth": 20.0},
                1,
                "cpu",
                torch.float32,
            )[0].item()

    assert loss(student_dir) < 0.5 * loss(teacher_dir)
    teacher = SyncDreamerTrainingModule.from_pretrained(teacher_dir).state_dict()
    student = SyncDreamerTrainingModule.from_pretrained(student_dir).state_dict()
    assert teacher.keys() == student.keys()
    assert not torch.equal(
        teacher["transformer.blocks.0.attn1.to_q.weight"], student["transformer.blocks.0.attn1.to_q.weight"]
    )


def test_student_folder_runs_one_transformer_pass_per_step(student_dir):
    pipe = SyncDreamerPipeline.from_pretrained(student_dir)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.default_num_inference_steps == 4
    assert pipe.config.default_guidance_scale == pipe.config.default_audio_guidance_scale == 1.0
    assert pipe.config.reference_sink and pipe.config.default_max_sequence_length == MAX_SEQUENCE_LENGTH
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler) and pipe.scheduler.config.solver_order == 1
    passes = count_transformer_passes(pipe)
    audio = np.random.default_rng(0).standard_normal(round(17 / FPS * 16000)).astype(np.float32) * 0.1
    for steps in (None, 2, 1):
        passes.clear()
        frames = pipe(
            image=np.zeros((HEIGHT, WIDTH, 3), np.uint8),
            audio=audio,
            sample_rate=16000,
            prompt="a person talks",
            fps=FPS,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
        ).frames
        assert frames.shape == (1, 17, HEIGHT, WIDTH, 3)
        assert passes == [1] * (steps or 4) * 3  # 17 frames = 3 windows; one pass of batch 1 per step


def test_lora_student_is_fused_into_a_plain_pipeline(teacher_dir, cache_dir, tmp_path):
    run_distillation(
        teacher_dir,
        cache_dir,
        tmp_path,
        "--max_train_steps",
        "3",
        "--lora_rank",
        "4",
        "--teacher_num_inference_steps",
        "1",
    )
    student = SyncDreamerPipeline.from_pretrained(tmp_path).transformer
    teacher = SyncDreamerPipeline.from_pretrained(teacher_dir).transformer
    assert not any("lora" in name for name in student.state_dict())
    assert not torch.equal(student.blocks[0].attn1.to_q.weight, teacher.blocks[0].attn1.to_q.weight)


def test_rerun_keeps_the_pairs_and_resumes_the_student(teacher_dir, cache_dir, student_dir, tmp_path):
    shutil.copytree(student_dir, tmp_path, dirs_exist_ok=True)
    pairs = sorted((tmp_path / distill.PAIRS_DIR).glob("*.safetensors"))
    written = [path.stat().st_mtime_ns for path in pairs]
    run_distillation(
        teacher_dir,
        cache_dir,
        tmp_path,
        "--max_train_steps",
        "30",
        "--motion_condition_prob",
        "0.5",
        "--resume_from_checkpoint",
        "latest",
    )
    assert [path.stat().st_mtime_ns for path in pairs] == written
    resumed = SyncDreamerTrainingModule.from_pretrained(tmp_path).state_dict()
    finished = SyncDreamerTrainingModule.from_pretrained(student_dir).state_dict()
    assert all(torch.equal(resumed[name], finished[name]) for name in finished)
    assert json.loads((tmp_path / "distillation.json").read_text())["train_steps"] == 30


SHIPPED_STUDENT, SHIPPED_TEACHER = REPO / "pipelines" / "syncdreamer-tiny-fast", REPO / "pipelines" / "syncdreamer-tiny"


@pytest.mark.parametrize("component", ["text_encoder", "image_encoder", "audio_encoder", "vae", "tokenizer"])
def test_shipped_student_shares_the_default_models_frozen_components(component):
    """SyncDreamer-Tiny-Fast is a student of the default model: a new default with other frozen encoders or VAE needs
    a new student (`training_scripts/FAST_STUDENT.md` has the command)."""
    folder = SHIPPED_TEACHER / component
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("tokenizer.json"))  # weights, vocabulary
    assert files
    for teacher_file in files:
        student_file = SHIPPED_STUDENT / component / teacher_file.name
        assert teacher_file.read_bytes() == student_file.read_bytes(), teacher_file


def test_shipped_student_runs_one_pass_per_step_with_its_defaults():
    teacher = SyncDreamerPipeline.load_config(SHIPPED_TEACHER)
    pipe = SyncDreamerPipeline.from_pretrained(SHIPPED_STUDENT)
    pipe.set_progress_bar_config(disable=True)
    assert (pipe.config.default_guidance_scale, pipe.config.default_audio_guidance_scale) == (1.0, 1.0)
    for name in ("num_frames_per_window", "num_motion_frames", "reference_sink", "default_max_sequence_length"):
        assert pipe.config[name] == teacher[name], name
    passes = count_transformer_passes(pipe)
    frames = pipe(
        image=REPO / "examples" / "reference.png",
        audio=np.zeros(round(9 / FPS * 16000), np.float32),
        sample_rate=16000,
        prompt="raise the right hand",
    ).frames
    assert frames.shape == (1, 9, 64, 64, 3)
    assert passes == [1] * pipe.config.default_num_inference_steps  # 9 frames: one window


def test_a_reference_sink_teacher_needs_reference_latents_in_the_cache(teacher_dir, tmp_path):
    cache = write_random_cache(tmp_path / "cache", num_windows=2, with_reference=False)
    with pytest.raises(ValueError, match="reference_latents"):
        run_distillation(teacher_dir, cache, tmp_path / "student", "--max_train_steps", "1")
