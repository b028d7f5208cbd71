"""The Gradio demo (`syncdreamer demo`): upload a reference image and speech (or record it), type a prompt, get the
talking-avatar video with the audio in it.

`build_demo(pipe)` returns the `gr.Blocks` app. What runs the pipeline is pluggable: `generate` is any function
with the signature of `generate_video` that yields `(frames, audio, prompt)` one or more times; the page shows each
yield as it comes, so a streaming generator (partial videos as windows finish) plugs in as it is. Bad input is
shown as a readable message in the page (`gr.Error`), never as a stack trace.
"""

import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from .media import save_video

FPS = 25
EXAMPLE_PROMPT = "raise the right hand"


def generate_video(
    pipe,
    image: str,
    audio: str,
    prompt: str,
    enhance_prompt: bool,
    num_inference_steps: int,
    guidance_scale: float,
    audio_guidance_scale: float,
    seed: int,
    on_step: Callable[[int, int], None],
) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
    """Runs the pipeline window by window (`pipe.stream`) and yields the video so far after every window:
    `frames (F, H, W, 3)` in [0, 1], `audio (N,)` 16 kHz (the span those frames cover) and the prompt used (the
    enhanced one with `enhance_prompt`); the last yield is the whole video. `on_step(step, total)` is called after
    every denoising step (steps count across windows)."""

    def report(pipeline, step, timestep, callback_kwargs):
        on_step(step + 1, pipeline.num_timesteps)
        return {}

    frames, audio_spans = [], []
    for window in pipe.stream(
        image=image,
        audio=audio,
        prompt=prompt,
        fps=FPS,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        audio_guidance_scale=audio_guidance_scale,
        enhance_prompt=enhance_prompt,
        generator=torch.Generator("cpu").manual_seed(seed),
        callback_on_step_end=report,
    ):
        frames.append(window.frames[0])
        audio_spans.append(window.audio)
        yield np.concatenate(frames), np.concatenate(audio_spans), window.prompt[0]


def build_demo(pipe, generate: Callable[..., Iterator] = generate_video) -> gr.Blocks:
    """The demo app around `pipe` (a loaded `SyncDreamerPipeline`); `demo.launch()` serves it."""
    output_dir = Path(tempfile.mkdtemp(prefix="syncdreamer-demo-"))
    has_enhancer = pipe.prompt_enhancer is not None

    def run(
        image,
        audio,
        prompt,
        enhance_prompt,
        num_inference_steps,
        guidance_scale,
        audio_guidance_scale,
        seed,
        progress=gr.Progress(),
    ):
        if not image:
            raise gr.Error("Upload a reference image (png, jpg or webp).")
        if not audio:
            raise gr.Error("Upload or record the driving audio (wav, mp3, flac, ogg or m4a).")
        if not (prompt or "").strip():
            raise gr.Error('Type a prompt: what the avatar does, e.g. "raise the right hand".')
        progress(0, desc="loading the inputs")
        try:
            for frames, waveform, used_prompt in generate(
                pipe,
                image,
                audio,
                prompt,
                enhance_prompt,
                int(num_inference_steps),
                float(guidance_scale),
                float(audio_guidance_scale),
                int(seed),
                on_step=lambda step, total: progress((step, total), desc="denoising"),
            ):
                path = save_video(frames, output_dir / f"{uuid.uuid4().hex}.mp4", fps=FPS, audio=waveform)
                yield str(path), used_prompt
        except (ValueError, TypeError) as error:  # what the pipeline says about its inputs, with the fix in it
            raise gr.Error(str(error)) from None

    config = pipe.config
    with gr.Blocks(title="SyncDreamer") as demo:
        gr.Markdown("# SyncDreamer\nA reference image + speech + a prompt -> a lip-synced talking-avatar video.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    label="Reference image", type="filepath", sources=["upload"], elem_id="reference-image"
                )
                audio = gr.Audio(
                    label="Driving audio", type="filepath", sources=["upload", "microphone"], elem_id="driving-audio"
                )
                prompt = gr.Textbox(label="Prompt", value=EXAMPLE_PROMPT, elem_id="prompt")
                enhance = gr.Checkbox(
                    label="Enhance the prompt" + ("" if has_enhancer else " (no prompt enhancer loaded)"),
                    value=False,
                    interactive=has_enhancer,
                    elem_id="enhance-prompt",
                )
                with gr.Accordion("Settings", open=True):
                    steps = gr.Slider(
                        1,
                        100,
                        value=config.default_num_inference_steps,
                        step=1,
                        label="Denoising steps per window",
                        elem_id="steps",
                    )
                    guidance = gr.Slider(
                        1,
                        10,
                        value=config.default_guidance_scale,
                        step=0.5,
                        label="Text guidance",
                        elem_id="guidance-scale",
                    )
                    audio_guidance = gr.Slider(
                        1,
                        10,
                        value=config.default_audio_guidance_scale,
                        step=0.5,
                        label="Audio guidance",
                        elem_id="audio-guidance-scale",
                    )
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                video = gr.Video(label="Video (with the audio)", elem_id="result-video", autoplay=False)
                used_prompt = gr.Textbox(
                    label="Prompt used (enhanced when enhancement is on)", interactive=False, elem_id="used-prompt"
                )
        button.click(run, [image, audio, prompt, enhance, steps, guidance, audio_guidance, seed], [video, used_prompt])
    return demo
