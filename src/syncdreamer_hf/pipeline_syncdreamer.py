"""SyncDreamerPipeline: reference image + driving audio + text prompt -> talking-avatar video.

Shaped like diffusers' `WanImageToVideoPipeline`. What is new:

- identity: the reference image goes through an image encoder (CLIP/SigLIP vision model) and the visual adapter
  into K identity tokens that every transformer block cross-attends to, in every window;
- audio: Wav2Vec2 hidden states of the window's audio -> audio dynamics encoder -> audio tokens per latent frame;
- guidance: separate text and audio scales. The passes that hear the audio (with the prompt, with the negative
  prompt) run as one batch; the pass without audio drops it with `audio_embeds=None`, as in training;
- long audio: the video is generated in windows of `num_frames_per_window` frames. Window 0 knows the reference
  image as its first latent frame; window w > 0 knows the last `num_motion_frames // s` latent frames of window
  w - 1 (carried as latents, never decoded and re-encoded) and generates the rest. Each window's new latents are
  decoded once, as soon as the window is denoised (after the carried latents as context, for a causal VAE), and
  the video is trimmed to exactly round(duration x fps) frames. `stream()` hands out the windows as they finish;
  `__call__` joins them;
- reference sink (`reference_sink=True` in the config): every window gets one extra known latent frame in front,
  the reference image's latent, so that no window depends only on the (imperfect) generated motion latents. The
  sink frame is conditioning only: it hears silent (zero) audio tokens and is dropped from the output. With
  `motion_latent_noise` > 0 the carried motion latents are noised to that flow-matching sigma first, as training
  noises them (`train_syncdreamer.py --motion_noise_max_sigma`), so errors in them are not copied forward.

Frame counts follow the VAE's temporal compression s = `vae.config.scale_factor_temporal` (4 for Wan): windows
have sk + 1 frames, one latent frame per s video frames after the first.

Audio is encoded and video decoded per window, so the working memory does not grow with the audio length; with
`stream()` nothing does (`__call__` returns the whole video, which does).
"""

import math
import os
import pickle
import re
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.loaders import WanLoraLoaderMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput, logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from safetensors.torch import load_file
from transformers import (
    CLIPVisionModel,
    PreTrainedTokenizerBase,
    UMT5EncoderModel,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)
from transformers.image_processing_utils import BaseImageProcessor

from .atomic import atomic_directory
from .losses import add_flow_noise
from .latents import denormalize_latents, normalize_latents
from .media import AUDIO_SAMPLE_RATE, load_audio, load_image, require_finite, require_int
from .model_cards import PLACEHOLDER_REPO_ID, ModelCardMixin, render_model_card
from .models.audio_dynamics import AudioDynamicsEncoder
from .models.autoencoder_frame import SyncDreamerFrameAutoencoder
from .models.transformer_syncdreamer import SyncDreamerTransformer3DModel
from .models.visual_adapter import SyncDreamerVisualAdapter
from .prompt_enhancer import SyncDreamerPromptEnhancer

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("np", "pt", "pil", "latent")
# Written by a LoRA run of training_scripts/train_syncdreamer.py: the identity/audio branches, trained in full.
NEW_BRANCHES_FILE = "transformer_new_branches.safetensors"
# Wan2.1 at 720p x 81 frames (21 x 45 x 80 tokens), the largest size it was trained on: above it a request warns.
HEAVY_TOKENS_PER_WINDOW = 75_600

SIDE_WORDS = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def mirrored_prompt(prompt: str) -> str:
    """`prompt` with the words "left" and "right" exchanged, their case kept: the same instruction for the other
    side ("wave with the Left hand" -> "wave with the Right hand")."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.upper() if word.isupper() else other.capitalize() if word[0].isupper() else other

    return SIDE_WORDS.sub(swap, prompt)


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> from syncdreamer_hf import SyncDreamerPipeline
        >>> from syncdreamer_hf.media import save_video

        >>> pipe = SyncDreamerPipeline.from_pretrained("pipelines/syncdreamer-tiny-random")
        >>> output = pipe(image="examples/reference.png", audio="examples/speech.wav", prompt="a person talks")
        >>> save_video(output.frames[0], "avatar.mp4", fps=25, audio=output.audio)
        ```
"""


@dataclass
class SyncDreamerPipelineOutput(BaseOutput):
    r"""
    Args:
        frames (`np.ndarray`, `torch.Tensor` or `list[list[PIL.Image.Image]]`):
            the videos: `(B, F, H, W, 3)` floats in [0, 1] for `"np"`, `(B, F, 3, H, W)` for `"pt"`, B lists of F
            images for `"pil"`, the stitched latents `(B, 16, T, H/8, W/8)` for `"latent"`.
        audio (`np.ndarray`): `(N,)` float32 16 kHz mono, the driving audio the frames cover (to mux with
            `media.save_video(..., audio=output.audio)`).
        prompt (`list[str]`, *optional*): the text prompts the video was generated with: the enhanced ones when
            `enhance_prompt=True`, else the prompts as given (`None` when `prompt_embeds` were passed).
    """

    frames: np.ndarray | torch.Tensor | list[list[PIL.Image.Image]]
    audio: np.ndarray
    prompt: list[str] | None = None


def _device_memory(device: torch.device) -> int | None:
    """The total memory of `device` in bytes (RAM for the CPU), or None where it cannot be known."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


@dataclass
class SyncDreamerWindowOutput(BaseOutput):
    r"""
    One window of a video from [`SyncDreamerPipeline.stream`], in order; the windows' frames concatenate to exactly
    what `__call__` returns for the same arguments.

    Args:
        frames (`np.ndarray`, `torch.Tensor` or `list[list[PIL.Image.Image]]`): the window's new frames in the
            `output_type` format (`(B, F_w, H, W, 3)` for `"np"`, `(B, F_w, 3, H, W)` for `"pt"`, B lists for
            `"pil"`, the window's new latents `(B, 16, T_w, h, w)` for `"latent"`).
        audio (`np.ndarray`): `(N_w,)` the span of the driving audio (16 kHz mono float32) these frames cover.
        first_frame (`int`): index of the window's first frame in the whole video.
        window_index (`int`), num_windows (`int`): which window this is, of how many.
        prompt (`list[str]`, *optional*): the prompts used (as in [`SyncDreamerPipelineOutput`]).
    """

    frames: np.ndarray | torch.Tensor | list[list[PIL.Image.Image]]
    audio: np.ndarray
    first_frame: int
    window_index: int
    num_windows: int
    prompt: list[str] | None = None


def prompt_clean(text: str) -> str:
    return " ".join(text.split())


class SyncDreamerPipeline(ModelCardMixin, DiffusionPipeline, WanLoraLoaderMixin):
    r"""
    Audio-driven avatar video from a reference image, a driving audio track and a text prompt.

    Args:
        tokenizer ([`PreTrainedTokenizerBase`]): umT5 tokenizer.
        text_encoder ([`UMT5EncoderModel`]): umT5 encoder, `(B, L) -> (B, L, text_dim)`.
        vae ([`AutoencoderKLWan`] or [`SyncDreamerFrameAutoencoder`]): Wan 3D VAE, frames `(B, 3, F, H, W)` <->
            latents `(B, 16, T, H/8, W/8)`; tiny CPU models use the per-frame autoencoder (T = F, H/4 x W/4).
        scheduler ([`UniPCMultistepScheduler`] or [`FlowMatchEulerDiscreteScheduler`]): flow-matching scheduler.
        image_processor ([`BaseImageProcessor`]): the image encoder's processor (e.g. `CLIPImageProcessor`).
        image_encoder ([`CLIPVisionModel`] or another transformers vision model): its `last_hidden_state`
            `(B, N_img, D_img)` feeds the visual adapter.
        visual_adapter ([`SyncDreamerVisualAdapter`]): `(B, N_img, D_img) -> (B, K, identity_dim)`.
        feature_extractor ([`Wav2Vec2FeatureExtractor`]): 16 kHz waveform -> normalised input values.
        audio_encoder ([`Wav2Vec2Model`]): all hidden states `(B, L, N_a, D)` at 50 Hz.
        audio_dynamics_encoder ([`AudioDynamicsEncoder`]): `(B, L, N_a, D) -> (B, T, N_tok, audio_dim)`.
        transformer ([`SyncDreamerTransformer3DModel`]): the denoiser.
        prompt_enhancer ([`SyncDreamerPromptEnhancer`], *optional*): Qwen2-VL that rewrites the prompt into a
            motion instruction grounded in the reference image (`enhance_prompt=True`).
        num_frames_per_window (`int`, defaults to 81): default frames per window (sk + 1).
        num_motion_frames (`int`, defaults to 8): default frames carried between windows, as latents (a
            multiple of s: each carried latent frame holds s video frames).
        default_height (`int`, defaults to 480), default_width (`int`, defaults to 832): the output size when
            `height`/`width` are not given.
        default_num_inference_steps (`int`, defaults to 40), default_guidance_scale (`float`, defaults to 5.0),
        default_audio_guidance_scale (`float`, defaults to 4.0), default_guidance_end (`float`, defaults to 1.0):
            the sampling settings when not given (a small model may want other scales than a large one).
        default_max_sequence_length (`int`, defaults to 512): umT5 tokens per prompt when not given; use the
            length the model was trained with (the latent cache's `max_sequence_length`): the zero-padded tokens
            share the text attention with the prompt's own.
        reference_sink (`bool`, defaults to `False`): prepend the reference latent to every window as a known
            frame (see the module docstring); `False` reproduces pipelines saved before this option.
        motion_latent_noise (`float`, defaults to 0.0): flow-matching sigma of the noise added to the motion
            latents carried into the next window.
        default_mirrored_negative_prompt (`bool`, defaults to `False`): `mirrored_negative_prompt` when not given.
    """

    model_cpu_offload_seq = (
        "prompt_enhancer->text_encoder->image_encoder->visual_adapter->audio_encoder->audio_dynamics_encoder->"
        "transformer->vae"
    )
    _optional_components = ["prompt_enhancer"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: UMT5EncoderModel,
        vae: AutoencoderKLWan | SyncDreamerFrameAutoencoder,
        scheduler: UniPCMultistepScheduler | FlowMatchEulerDiscreteScheduler,
        image_processor: BaseImageProcessor,
        image_encoder: CLIPVisionModel,
        visual_adapter: SyncDreamerVisualAdapter,
        feature_extractor: Wav2Vec2FeatureExtractor,
        audio_encoder: Wav2Vec2Model,
        audio_dynamics_encoder: AudioDynamicsEncoder,
        transformer: SyncDreamerTransformer3DModel,
        prompt_enhancer: SyncDreamerPromptEnhancer | None = None,
        num_frames_per_window: int = 81,
        num_motion_frames: int = 8,
        default_height: int = 480,
        default_width: int = 832,
        default_num_inference_steps: int = 40,
        default_guidance_scale: float = 5.0,
        default_audio_guidance_scale: float = 4.0,
        default_guidance_end: float = 1.0,
        default_max_sequence_length: int = 512,
        reference_sink: bool = False,
        motion_latent_noise: float = 0.0,
        default_mirrored_negative_prompt: bool = False,
    ):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            scheduler=scheduler,
            image_processor=image_processor,
            image_encoder=image_encoder,
            visual_adapter=visual_adapter,
            feature_extractor=feature_extractor,
            audio_encoder=audio_encoder,
            audio_dynamics_encoder=audio_dynamics_encoder,
            transformer=transformer,
            prompt_enhancer=prompt_enhancer,
        )
        self.register_to_config(
            num_frames_per_window=num_frames_per_window,
            num_motion_frames=num_motion_frames,
            default_height=default_height,
            default_width=default_width,
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=default_guidance_scale,
            default_audio_guidance_scale=default_audio_guidance_scale,
            default_guidance_end=default_guidance_end,
            default_max_sequence_length=default_max_sequence_length,
            reference_sink=reference_sink,
            motion_latent_noise=motion_latent_noise,
            default_mirrored_negative_prompt=default_mirrored_negative_prompt,
        )
        # Without a VAE (e.g. loaded with `vae=None` to encode prompts only) Wan's compression factors apply.
        self.vae_scale_factor_temporal = self.vae.config.scale_factor_temporal if self.vae is not None else 4
        self.vae_scale_factor_spatial = self.vae.config.scale_factor_spatial if self.vae is not None else 8
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)

    @classmethod
    def _maybe_expand_t2v_lora_for_i2v(cls, transformer, state_dict):
        """Wan's loader pads T2V LoRAs for the Wan2.1-I2V image branch; our transformer has none (identity goes
        through its own cross-attention), so a LoRA state dict is loaded as it is."""
        return state_dict

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' `from_pretrained`; pickle weights that torch refuses to unpickle (they hold more than tensors;
        nothing in them is run) are reported with the components they belong to and the fix."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except pickle.UnpicklingError as error:
            folder = Path(pretrained_model_name_or_path)
            pickled = sorted(
                weights.parent.name
                for weights in folder.glob("*/*.bin")
                if not any(weights.parent.glob("*.safetensors"))
            )
            where = f"component(s) {', '.join(pickled)} of {str(folder)!r}" if pickled else repr(str(folder))
            raise ValueError(
                f"{where}: the weights are only a pickle (.bin) that torch refused to load (`weights_only`: it holds "
                "objects other than tensors; nothing in it was run). Convert it to safetensors: if you trust the "
                "file, load it with `torch.load(path, weights_only=False)` and save the state dict with "
                "`safetensors.torch.save_file`."
            ) from error

    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' `save_pretrained`, written atomically: everything goes to a temporary folder beside
        `save_directory`, which is then renamed into place (component by component into an existing folder, whose
        other files stay); a failed or interrupted save leaves no half-written component."""
        if kwargs.get("push_to_hub"):
            kwargs.setdefault("repo_id", Path(save_directory).name)  # else diffusers names it after the temporary
        with atomic_directory(save_directory) as temporary:
            super().save_pretrained(str(temporary), *args, **kwargs)

    def load_trained_modules(self, path) -> "SyncDreamerPipeline":
        """Loads everything a LoRA run of `training_scripts/train_syncdreamer.py` trained: the LoRA layers (with
        `load_lora_weights`) and, when the run saved them, the fully trained visual adapter, audio dynamics encoder
        and transformer identity/audio branches."""
        path = Path(path)
        self.load_lora_weights(path)
        for name in ("visual_adapter", "audio_dynamics_encoder"):
            if (path / name).is_dir():
                module = getattr(self, name)
                module.load_state_dict(type(module).from_pretrained(path / name).state_dict())
        if (path / NEW_BRANCHES_FILE).is_file():
            self.transformer.load_new_branch_state_dict(load_file(path / NEW_BRANCHES_FILE))
        return self

    def model_card(self, repo_id: str = PLACEHOLDER_REPO_ID):
        """The pipeline's default card; `model_cards.write_model_card` writes one with a title, summary and notes."""
        return render_model_card(self, repo_id=repo_id)

    def save_model_cards(self, directory, repo_id: str = PLACEHOLDER_REPO_ID) -> None:
        """Writes the pipeline's card as `directory/README.md` and each SyncDreamer model's card into its folder
        (`save_pretrained` calls it; `push_to_hub` too, with the repo id in the cards' usage)."""
        super().save_model_cards(directory, repo_id)
        for name, component in self.components.items():
            if isinstance(component, ModelCardMixin):
                component.save_model_cards(Path(directory) / name, repo_id)

    @staticmethod
    def tokenize_prompts(tokenizer, prompt: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`prompt` (B strings) -> `(input_ids, attention_mask)`, each `(B, max_sequence_length)` (as Wan)."""
        text_inputs = tokenizer(
            [prompt_clean(text) for text in prompt],
            padding="max_length",
            max_length=max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return text_inputs.input_ids, text_inputs.attention_mask

    @staticmethod
    def embed_prompt_tokens(text_encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`(B, L)` tokens -> `(B, L, text_dim)` umT5 embeddings, zero past each prompt's tokens (as Wan)."""
        prompt_embeds = text_encoder(input_ids, attention_mask).last_hidden_state
        return prompt_embeds * attention_mask.unsqueeze(-1).to(prompt_embeds.dtype)

    def _get_t5_prompt_embeds(self, prompt: list[str], max_sequence_length: int, device, dtype) -> torch.Tensor:
        """`prompt` (B strings) -> `(B, max_sequence_length, text_dim)`, zero past each prompt's tokens."""
        input_ids, mask = self.tokenize_prompts(self.tokenizer, prompt, max_sequence_length)
        return self.embed_prompt_tokens(self.text_encoder, input_ids.to(device), mask.to(device)).to(dtype=dtype)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int = 512,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns `prompt_embeds (B N, L, text_dim)` and, with guidance, `negative_prompt_embeds` (same shape;
        the negative prompt defaults to the empty string), each prompt repeated for its N = `num_videos_per_prompt`
        videos (prompt 0's N rows first). Precomputed embeddings `(B, L, text_dim)` are used as they are, so with
        both given (or `prompt_embeds` without guidance) no `text_encoder` is needed; `dtype` defaults to the
        precomputed `prompt_embeds`' dtype, else the text encoder's."""
        needs_text_encoder = prompt_embeds is None or (do_classifier_free_guidance and negative_prompt_embeds is None)
        if needs_text_encoder and self.text_encoder is None:
            raise ValueError(
                "The pipeline has no `text_encoder`: pass `prompt_embeds` (and `negative_prompt_embeds` when "
                "`guidance_scale` > 1), or load the pipeline with its text encoder."
            )
        device = device or self._execution_device
        dtype = dtype or (prompt_embeds.dtype if prompt_embeds is not None else self.text_encoder.dtype)
        prompt = [prompt] if isinstance(prompt, str) else prompt
        if prompt_embeds is None:
            prompt_embeds = self._get_t5_prompt_embeds(prompt, max_sequence_length, device, dtype)
        batch_size = prompt_embeds.shape[0]

        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = negative_prompt or ""
            negative_prompt = [negative_prompt] * batch_size if isinstance(negative_prompt, str) else negative_prompt
            negative_prompt_embeds = self._get_t5_prompt_embeds(
                negative_prompt, prompt_embeds.shape[1], device, dtype
            )
        prompt_embeds = prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds

    def encode_image_hidden_states(self, images: list[PIL.Image.Image], device: torch.device) -> torch.Tensor:
        """Reference images -> the image encoder's last hidden state `(B, N_img, D_img)` (frozen; cached by
        `syncdreamer preprocess` for training)."""
        pixel_values = self.image_processor(images=images, return_tensors="pt").pixel_values
        pixel_values = pixel_values.to(device=device, dtype=self.image_encoder.dtype)
        return self.image_encoder(pixel_values=pixel_values).last_hidden_state

    def encode_image(
        self, images: list[PIL.Image.Image], device: torch.device, image_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reference images -> identity tokens `(B, K, identity_dim)` through the visual adapter; with
        precomputed `image_embeds` (the image encoder's hidden states `(B, N_img, D_img)`) the images are not
        encoded and no image encoder is needed."""
        if image_embeds is None:
            image_embeds = self.encode_image_hidden_states(images, device)
        return self.visual_adapter(image_embeds.to(device=device, dtype=self.visual_adapter.dtype)).identity_embeds

    def encode_audio_hidden_states(
        self, waveform: np.ndarray, fps: float, first_frame: int, num_frames: int, device
    ) -> torch.Tensor:
        """Every Wav2Vec2 hidden state of one window's audio, `(1, L, N_a, D)` at 50 Hz (frozen; cached by
        `syncdreamer preprocess` for training).

        Args:
            waveform: `(N,)` 16 kHz mono float32, the whole driving audio.
            fps: video frame rate.
            first_frame: the window's first video frame; the window spans `num_frames` frames (sk + 1) from it.
                Samples past the end of `waveform` are silence.
        """
        start = round(first_frame / fps * AUDIO_SAMPLE_RATE)
        length = max(round(num_frames / fps * AUDIO_SAMPLE_RATE), self._min_audio_samples())
        window = np.zeros(length, dtype=np.float32)
        segment = waveform[start : start + length]
        window[: len(segment)] = segment

        input_values = self.feature_extractor(
            window, sampling_rate=AUDIO_SAMPLE_RATE, return_tensors="pt"
        ).input_values.to(device=device, dtype=self.audio_encoder.dtype)
        hidden_states = self.audio_encoder(input_values, output_hidden_states=True).hidden_states
        return torch.stack(hidden_states, dim=1)

    def encode_audio(self, waveform: np.ndarray, fps: float, first_frame: int, num_frames: int, device) -> torch.Tensor:
        """The audio tokens of one window, `(1, T, N_tok, audio_dim)` with T = (num_frames - 1) // s + 1
        (arguments as `encode_audio_hidden_states`)."""
        hidden_states = self.encode_audio_hidden_states(waveform, fps, first_frame, num_frames, device)
        return self.audio_dynamics_encoder(hidden_states.to(self.audio_dynamics_encoder.dtype), num_frames).audio_embeds

    def _min_audio_samples(self) -> int:
        """The receptive field of the Wav2Vec2 feature encoder (400 samples for wav2vec2-base): shorter input
        gives no feature at all."""
        receptive_field = 1
        config = self.audio_encoder.config
        for kernel, stride in zip(reversed(config.conv_kernel), reversed(config.conv_stride)):
            receptive_field = (receptive_field - 1) * stride + kernel
        return receptive_field

    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frames `(B, 3, F, H, W)` in [-1, 1] -> normalised VAE latents `(B, 16, T, H/8, W/8)` (posterior mode)."""
        latents = self.vae.encode(pixels.to(device=self.vae.device, dtype=self.vae.dtype)).latent_dist.mode()
        return normalize_latents(latents, self.vae.config)

    def preprocess_frames(self, frames: list[PIL.Image.Image], height: int, width: int) -> torch.Tensor:
        """Images (the reference, or a clip's frames) -> `(1, 3, F, H, W)` in [-1, 1]: resized to cover
        `height` x `width` and centre-cropped. Training data goes through the same function."""
        return self.video_processor.preprocess(frames, height=height, width=width, resize_mode="crop").transpose(0, 1)[None]

    def encode_reference(self, images: list[PIL.Image.Image], height: int, width: int, device) -> torch.Tensor:
        """Reference images -> normalised VAE latents `(B, 16, 1, H/8, W/8)`, the known first latent frame."""
        pixels = torch.cat([self.preprocess_frames([image], height, width) for image in images])  # (B, 3, 1, H, W)
        return self.encode_video(pixels.to(device))

    @staticmethod
    def repeat_to_batch(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
        """`(1 or B, ...)` -> `(B N, ...)`: one entry for the whole batch, or one per prompt, repeated for each of
        the prompt's videos (the order of `encode_prompt`)."""
        return tensor.repeat_interleave(batch_size // tensor.shape[0], dim=0)

    @staticmethod
    def prepare_condition(known_latents: torch.Tensor, num_latent_frames: int) -> torch.Tensor:
        """Wan-I2V-style conditioning: `[mask (B, 4, T, h, w) | condition latents (B, 16, T, h, w)]`.

        The first `k = known_latents.shape[2]` latent frames are known: mask 1 and the known latents; the rest
        have mask 0 and zero latents. Training builds its conditioning with this same function.

        Args:
            known_latents: `(B, 16, k, h, w)`, normalised latents (the reference image, or the motion latents).
            num_latent_frames: T.

        Returns:
            `(B, 20, T, h, w)`, concatenated after the noisy latents to make the transformer's 36 channels.
        """
        batch_size, channels, num_known, height, width = known_latents.shape
        condition = known_latents.new_zeros(batch_size, channels, num_latent_frames, height, width)
        condition[:, :, :num_known] = known_latents
        mask = known_latents.new_zeros(batch_size, 4, num_latent_frames, height, width)
        mask[:, :, :num_known] = 1
        return torch.cat([mask, condition], dim=1)

    @staticmethod
    def add_reference_sink(reference_latents: torch.Tensor, known_latents: torch.Tensor) -> torch.Tensor:
        """The reference sink in front of a window's known frames: `reference_latents (B, 16, 1, h, w)` (the
        reference image's normalised latent) + `known_latents (B, 16, k, h, w)` (the window's own known frames: the
        reference, or the motion latents carried from the previous window) -> `(B, 16, 1 + k, h, w)`. The window
        then has 1 + T latent frames, the first dropped from its output. Training builds its windows the same way."""
        return torch.cat([reference_latents.to(known_latents), known_latents], dim=2)

    @staticmethod
    def add_sink_audio(audio_embeds: torch.Tensor) -> torch.Tensor:
        """Audio tokens `(B, T, N_tok, audio_dim)` -> `(B, 1 + T, N_tok, audio_dim)`: silent (zero) tokens for the
        reference sink frame."""
        return torch.cat([torch.zeros_like(audio_embeds[:, :1]), audio_embeds], dim=1)

    def plan_windows(self, num_frames: int, num_frames_per_window: int, num_motion_frames: int) -> tuple:
        """Splits `num_frames` video frames into windows.

        Returns:
            `(window_latent_frames, starts, num_latent_frames)`: each window has `window_latent_frames` latent
            frames; window w starts at latent frame `starts[w]` of the stitched sequence (consecutive windows
            overlap by the motion latents); the stitched sequence keeps its first `num_latent_frames`, enough for
            `num_frames` frames. A video that fits in one window gets one window of just the frames it needs.
        """
        stride = self.vae_scale_factor_temporal
        num_latent_frames = math.ceil((num_frames - 1) / stride) + 1
        window_latent_frames = (num_frames_per_window - 1) // stride + 1
        if num_latent_frames <= window_latent_frames:
            return num_latent_frames, [0], num_latent_frames
        step = window_latent_frames - num_motion_frames // stride
        num_windows = math.ceil((num_latent_frames - window_latent_frames) / step) + 1
        return window_latent_frames, [w * step for w in range(num_windows)], num_latent_frames

    def prepare_latents(
        self, batch_size: int, num_latent_frames: int, height: int, width: int, generator, device, latents=None
    ) -> torch.Tensor:
        """Gaussian noise `(B, 16, T, H/8, W/8)` in float32 (`latents`, when given, on `device`)."""
        if latents is not None:
            return latents.to(device=device, dtype=torch.float32)
        shape = self.window_latents_shape(batch_size, num_latent_frames, height, width)
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

    def window_latents_shape(self, batch_size: int, num_latent_frames: int, height: int, width: int) -> tuple:
        s = self.vae_scale_factor_spatial
        return (batch_size, self.transformer.config.out_channels, num_latent_frames, height // s, width // s)

    def split_latents(
        self, latents: torch.Tensor, batch_size: int, num_windows: int, num_window_latents: int, height: int, width: int
    ) -> tuple[torch.Tensor, ...]:
        """The `latents` argument of `__call__`, `(B N, 16, W T_w, h, w)`, as the initial noise of each window."""
        expected = self.window_latents_shape(batch_size, num_windows * num_window_latents, height, width)
        if tuple(latents.shape) != expected:
            raise ValueError(
                f"`latents` must have the shape {expected}: the initial noise of the {num_windows} window(s) of "
                f"{num_window_latents} latent frames each, concatenated along dim 2; got {tuple(latents.shape)}."
            )
        return latents.split(num_window_latents, dim=2)

    @staticmethod
    def slice_audio_embeds(audio_embeds: torch.Tensor, start: int, num_latent_frames: int) -> torch.Tensor:
        """One window's audio tokens from the whole video's `audio_embeds (B, T, N_tok, audio_dim)`: latent frames
        `start` to `start + num_latent_frames - 1`, zeros (silent tokens, as the reference sink's) past the end."""
        window = audio_embeds[:, start : start + num_latent_frames]
        return torch.nn.functional.pad(window, (0, 0, 0, 0, 0, num_latent_frames - window.shape[1]))

    def decode_latents(self, latents: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Normalised latents `(B, 16, T, h, w)` -> frames `(B, 3, F, H, W)` in [-1, 1] (F = (T - 1) s + 1, or the
        first `num_frames`)."""
        latents = latents.to(device=self.vae.device, dtype=self.vae.dtype)
        video = self.vae.decode(denormalize_latents(latents, self.vae.config), return_dict=False)[0]
        return video[:, :, :num_frames]

    def decode_window(self, latents: torch.Tensor, context_latents: torch.Tensor | None = None) -> torch.Tensor:
        """The frames of a window's new latents `(B, 16, n, h, w)`: `(B, 3, F, H, W)` in [-1, 1].

        A causal video VAE (Wan's, s > 1) decodes the first latent frame of a sequence differently from later
        ones, so a later window is decoded after `context_latents` `(B, 16, m, h, w)` (the latents just before it,
        already decoded) and their frames are dropped: each window is decoded once and the windows' frames add up to
        the frames of the whole latent sequence. The per-frame autoencoder (s = 1) needs no context.
        """
        if context_latents is None or self.vae_scale_factor_temporal == 1:
            return self.decode_latents(latents)
        video = self.decode_latents(torch.cat([context_latents, latents], dim=2))
        num_context_frames = (context_latents.shape[2] - 1) * self.vae_scale_factor_temporal + 1
        return video[:, :, num_context_frames:]

    def check_inputs(
        self,
        prompt,
        negative_prompt,
        images,
        height,
        width,
        fps,
        num_frames,
        num_frames_per_window,
        num_motion_frames,
        num_inference_steps,
        guidance_scale,
        audio_guidance_scale,
        output_type,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        callback_on_step_end_tensor_inputs=None,
        num_videos_per_prompt=1,
        latents=None,
        image_embeds=None,
        audio_embeds=None,
        guidance_end=1.0,
    ):
        for name, value in (("height", height), ("width", width), ("num_frames_per_window", num_frames_per_window),
                            ("num_motion_frames", num_motion_frames), ("num_inference_steps", num_inference_steps)):
            require_int(name, value)
        if num_frames is not None:
            require_int("num_frames", num_frames)
        for name, value in (("fps", fps), ("guidance_scale", guidance_scale),
                            ("audio_guidance_scale", audio_guidance_scale), ("guidance_end", guidance_end)):
            require_finite(name, value)
        multiple = self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]
        if height <= 0 or width <= 0 or height % multiple or width % multiple:
            raise ValueError(f"`height` and `width` must be positive multiples of {multiple}; got {height}x{width}.")
        if fps <= 0:
            raise ValueError(f"`fps` must be positive (e.g. 25); got {fps}.")
        stride = self.vae_scale_factor_temporal
        if self.audio_dynamics_encoder is not None and self.audio_dynamics_encoder.config.temporal_stride != stride:
            raise ValueError(
                f"The audio dynamics encoder groups {self.audio_dynamics_encoder.config.temporal_stride} frames per "
                f"latent frame but the VAE compresses time by {stride}: set its `temporal_stride` to {stride}."
            )
        for name, value in (("num_frames", num_frames), ("num_frames_per_window", num_frames_per_window)):
            if value is not None and (value < 1 or (value - 1) % stride):
                raise ValueError(
                    f"`{name}` must be {stride}k + 1 (1, {1 + stride}, {1 + 2 * stride}, ...); got {value}."
                )
        window_latents = (num_frames_per_window - 1) // stride + 1
        if num_motion_frames % stride or not 0 < num_motion_frames // stride < window_latents:
            raise ValueError(
                f"`num_motion_frames` must be a positive multiple of {stride} below `num_frames_per_window` - 1 "
                f"({num_frames_per_window - 1}); got {num_motion_frames}."
            )
        if num_inference_steps <= 0:
            raise ValueError(f"`num_inference_steps` must be a positive integer; got {num_inference_steps}.")
        if guidance_scale < 0 or audio_guidance_scale < 0:
            raise ValueError(
                f"`guidance_scale` and `audio_guidance_scale` must be >= 0 (1 disables guidance); got "
                f"{guidance_scale} and {audio_guidance_scale}."
            )
        if not 0 <= guidance_end <= 1:
            raise ValueError(f"`guidance_end` must lie in [0, 1] (a fraction of the steps); got {guidance_end}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}; got {output_type!r}.")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("Pass exactly one of `prompt` and `prompt_embeds`.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass at most one of `negative_prompt` and `negative_prompt_embeds`.")
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not isinstance(value, str) and not (
                isinstance(value, list) and all(isinstance(text, str) for text in value)
            ):
                raise ValueError(f"`{name}` must be a string or a list of strings; got {type(value).__name__}.")
            for text in [value] if isinstance(value, str) else value or []:
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as error:  # bytes that were not UTF-8, kept as lone surrogates
                    raise ValueError(
                        f"`{name}` is not valid UTF-8 text (character {error.start}, {text[error.start]!r}, is an "
                        "undecodable byte); pass the text as UTF-8 (check the terminal's or the file's encoding)."
                    ) from None
        batch_size = len(prompt) if isinstance(prompt, list) else 1 if prompt is not None else len(prompt_embeds)
        if len(images) not in (1, batch_size):
            raise ValueError(
                f"`image` is a list of {len(images)} images but the batch has {batch_size} prompts; pass one image "
                "or one per prompt."
            )
        if isinstance(negative_prompt, list) and len(negative_prompt) != batch_size:
            raise ValueError(
                f"`negative_prompt` has {len(negative_prompt)} entries but `prompt` has {batch_size}; pass one "
                "string or a list as long as `prompt`."
            )
        if callback_on_step_end_tensor_inputs is not None and not all(
            name in self._callback_tensor_inputs for name in callback_on_step_end_tensor_inputs
        ):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be a subset of {self._callback_tensor_inputs}; got "
                f"{callback_on_step_end_tensor_inputs}."
            )
        require_int("num_videos_per_prompt", num_videos_per_prompt)
        if num_videos_per_prompt < 1:
            raise ValueError(f"`num_videos_per_prompt` must be a positive integer; got {num_videos_per_prompt}.")
        if latents is not None and latents.ndim != 5:
            raise ValueError(f"`latents` must be 5-D, (B N, 16, W T_w, h, w); got shape {tuple(latents.shape)}.")
        for name, value, ndim, shape, encoders in (
            ("image_embeds", image_embeds, 3, "(1 or B, N_img, D_img)", ("image_encoder",)),
            ("audio_embeds", audio_embeds, 4, "(1 or B, T, N_tok, D)", ("audio_encoder", "audio_dynamics_encoder")),
        ):
            missing = [encoder for encoder in encoders if getattr(self, encoder) is None]
            if value is None and missing:
                raise ValueError(
                    f"The pipeline has no `{missing[0]}`: pass `{name}` {shape}, or load the pipeline with it."
                )
            if value is not None and (value.ndim != ndim or value.shape[0] not in (1, batch_size)):
                raise ValueError(
                    f"`{name}` must have the shape {shape} with a batch of 1 or {batch_size} (one per prompt); got "
                    f"{tuple(value.shape)}."
                )

    def check_memory(
        self, batch_size: int, height: int, width: int, num_frames: int, num_frames_per_window: int,
        num_motion_frames: int, guidance_scale: float, output_type: str, device,
    ) -> int:
        """Estimates the working memory of a request beyond the loaded weights, before anything heavy runs: warns
        when it is heavy (more tokens per window than Wan's 720p x 81 frames, or over half the device's memory)
        and raises a `ValueError` when it exceeds the device's memory. Returns the estimate in bytes.

        The estimate is a lower bound: one transformer pass over the window's tokens (hidden states, attention
        projections, feed-forward), the VAE's widest activations over the frames it decodes at once, and the
        decoded video (the float tensor and the output array).
        """
        config = self.transformer.config
        window_latents, _, _ = self.plan_windows(num_frames, num_frames_per_window, num_motion_frames)
        window_latents += int(self.config.reference_sink)
        tokens = (
            window_latents // config.patch_size[0]
            * (height // self.vae_scale_factor_spatial // config.patch_size[1])
            * (width // self.vae_scale_factor_spatial // config.patch_size[2])
        )
        passes = batch_size * (2 if guidance_scale > 1 else 1)  # with text guidance two prompts run as one batch
        hidden_width = config.ffn_dim + 8 * config.num_attention_heads * config.attention_head_dim
        estimate = passes * tokens * hidden_width * self.transformer.dtype.itemsize
        if output_type != "latent" and self.vae is not None:
            vae_config = self.vae.config
            if isinstance(self.vae, SyncDreamerFrameAutoencoder):  # decodes a window's frames in one batch
                vae_width, frames_at_once = vae_config.block_out_channels[0], min(num_frames, num_frames_per_window)
            else:  # Wan's VAE decodes one latent frame (s frames) at a time
                vae_width = (vae_config.decoder_base_dim or vae_config.base_dim) * vae_config.dim_mult[0]
                frames_at_once = self.vae_scale_factor_temporal
            pixels = batch_size * height * width
            estimate += pixels * frames_at_once * 4 * vae_width * self.vae.dtype.itemsize
            estimate += pixels * num_frames * 3 * 4 * 2

        device_memory = _device_memory(torch.device(device))
        summary = (
            f"{height}x{width}, {num_frames} frames: {tokens:,} tokens per window ({passes} pass(es) at once) and "
            f"about {estimate / 2**30:.1f} GiB of working memory beyond the weights"
        )
        if device_memory is not None and estimate > device_memory:
            raise ValueError(
                f"{summary}, more than the {device_memory / 2**30:.1f} GiB the {device} has; lower `height` and "
                f"`width` (the model's default is {self.config.default_height}x{self.config.default_width}) or "
                "generate fewer frames."
            )
        if tokens > HEAVY_TOKENS_PER_WINDOW or (device_memory is not None and estimate > device_memory / 2):
            logger.warning(
                f"Heavy request: {summary}; encoding the reference and each step will take long. For a quicker run "
                f"lower `height` and `width` (the model's default is {self.config.default_height}x"
                f"{self.config.default_width})."
            )
        return estimate

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def audio_guidance_scale(self):
        return self._audio_guidance_scale

    @property
    def do_classifier_free_guidance(self):
        return self._guidance_scale > 1.0

    @property
    def do_audio_guidance(self):
        return self._audio_guidance_scale > 1.0

    @property
    def num_timesteps(self):
        return self._num_timesteps

    @property
    def current_timestep(self):
        return self._current_timestep

    @property
    def interrupt(self):
        return self._interrupt

    @property
    def attention_kwargs(self):
        return self._attention_kwargs

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image,
        audio,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        sample_rate: int | None = None,
        height: int | None = None,
        width: int | None = None,
        fps: float = 25,
        num_frames: int | None = None,
        num_frames_per_window: int | None = None,
        num_motion_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        audio_guidance_scale: float | None = None,
        guidance_end: float | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int | None = None,
        enhance_prompt: bool = False,
        mirrored_negative_prompt: bool | None = None,
    ):
        r"""
        Generates a talking-avatar video driven by `audio`.

        Args:
            image: the reference image (path, PIL image or array; any mode, any size: converted to RGB, centre-
                cropped to the output aspect and resized), or a list of them, one per prompt.
            audio: the driving audio: a path to any file PyAV reads (wav, mp3, flac, ogg, m4a, an mp4 with an
                audio track) or an array of samples with `sample_rate`. One track drives the whole batch.
            prompt: the text prompt, or a list (the batch).
            negative_prompt: what to steer away from with text guidance (default: the empty prompt).
            sample_rate: the sample rate of `audio` when it is an array.
            height, width: output size, multiples of 16 (default: the pipeline's `default_height/width`).
            fps: frames per second of the output.
            num_frames: frames to generate, sk + 1 (s: the VAE's temporal compression); `None` (default): the
                whole audio, exactly round(duration x fps) frames. Audio shorter than `num_frames` is padded with
                silence.
            num_frames_per_window: frames per window (sk + 1), default from the pipeline config.
            num_motion_frames: frames carried from one window to the next as latents (a multiple of s), default
                from the pipeline config.
            num_inference_steps: denoising steps per window (default: the config's `default_num_inference_steps`).
            guidance_scale: text guidance scale (1 disables it; default: the config's `default_guidance_scale`).
            audio_guidance_scale: audio guidance scale (1 disables it; default: the config's
                `default_audio_guidance_scale`). With both on, each step runs the prompt and
                the negative prompt with audio as one batch, then the negative prompt without audio:
                `noise = uncond + audio_scale * (no_text - uncond) + text_scale * (cond - no_text)`.
            guidance_end: the fraction of each window's denoising steps, from the first (noisiest) one, that use
                text guidance (default: the config's `default_guidance_end`; 1: every step). The later steps run
                the prompt without the negative prompt's pass: the motion the prompt asks for is laid out in the
                noisy steps, while strong text guidance in the last steps shifts colours and the mouth.
            num_videos_per_prompt: videos per prompt (each from its own noise); the output has B x N videos,
                prompt 0's N first.
            generator: a `torch.Generator`, or one per video (B x N), for deterministic noise.
            latents: the initial noise of every window instead of drawing it from `generator`, `(B N, 16, W T_w,
                h, w)`: the W windows' noise `(B N, 16, T_w, h, w)` concatenated along time, in the order the
                pipeline draws it (`prepare_latents` once per window; T_w counts the reference-sink frame when the
                config has one). Noise drawn from a generator that way reproduces that generator's video (the
                noise added to carried motion latents, with `motion_latent_noise` > 0, still comes from
                `generator`).
            prompt_embeds, negative_prompt_embeds: precomputed umT5 embeddings `(B, L, text_dim)`; with them no
                `text_encoder` is needed.
            image_embeds: precomputed image-encoder hidden states of the reference image(s) `(1 or B, N_img,
                D_img)` (what `encode_image_hidden_states` returns, as Wan's image-to-video `image_embeds`), fed to
                the visual adapter; with them no `image_encoder` is needed (`image` is still encoded by the VAE
                as the reference latent).
            audio_embeds: precomputed audio tokens for the whole video, `(1 or B, T, N_tok, audio_dim)`: the audio
                dynamics encoder's output, one group per latent frame of the stitched video (T >= (num_frames -
                1) / s + 1); window w hears `audio_embeds[:, start_w : start_w + T_w]` (zeros past the end). With
                them neither `audio_encoder` nor `audio_dynamics_encoder` runs; `audio` still sets the duration
                and is returned for muxing.
            output_type: `"np"`, `"pt"`, `"pil"` or `"latent"`.
            return_dict: return a [`SyncDreamerPipelineOutput`] instead of a tuple `(frames, audio)`.
            attention_kwargs: passed to the transformer (`{"scale": s}` scales LoRA layers).
            callback_on_step_end: called after every denoising step as
                `callback_on_step_end(pipe, step, timestep, callback_kwargs)`; `step` counts across windows.
            callback_on_step_end_tensor_inputs: the tensors passed in `callback_kwargs`.
            max_sequence_length: umT5 tokens per prompt (default: the config's `default_max_sequence_length`).
            enhance_prompt: rewrite each prompt with the `prompt_enhancer` (Qwen2-VL, greedy) into a motion
                instruction grounded in its reference image; the text used is returned in `output.prompt`.
            mirrored_negative_prompt: for a prompt that names a side ("left" / "right"), text guidance steers away
                from the same prompt with the sides exchanged (`mirrored_prompt`) instead of from the empty prompt,
                so the guidance pushes on what tells the two sides apart; prompts without a side keep the empty
                negative. Applies when neither `negative_prompt` nor `negative_prompt_embeds` is given, after
                `enhance_prompt` (default: the config's `default_mirrored_negative_prompt`).

        Examples:
        """
        windows = list(
            self.stream(
            image=image,
            audio=audio,
            prompt=prompt,
            negative_prompt=negative_prompt,
            sample_rate=sample_rate,
            height=height,
            width=width,
            fps=fps,
            num_frames=num_frames,
            num_frames_per_window=num_frames_per_window,
            num_motion_frames=num_motion_frames,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            audio_guidance_scale=audio_guidance_scale,
            guidance_end=guidance_end,
            num_videos_per_prompt=num_videos_per_prompt,
            generator=generator,
            latents=latents,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            image_embeds=image_embeds,
            audio_embeds=audio_embeds,
            output_type=output_type,
            attention_kwargs=attention_kwargs,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            max_sequence_length=max_sequence_length,
            enhance_prompt=enhance_prompt,
            mirrored_negative_prompt=mirrored_negative_prompt,
            )
        )
        audio = np.concatenate([window.audio for window in windows])
        if output_type == "latent":
            video = torch.cat([window.frames for window in windows], dim=2)
        elif output_type == "pil":
            video = [sum((window.frames[index] for window in windows), []) for index in range(len(windows[0].frames))]
        elif output_type == "pt":
            video = torch.cat([window.frames for window in windows], dim=1)
        else:
            video = np.concatenate([window.frames for window in windows], axis=1)

        if not return_dict:
            return video, audio
        return SyncDreamerPipelineOutput(frames=video, audio=audio, prompt=windows[0].prompt)

    @torch.no_grad()
    def stream(
        self,
        image,
        audio,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        sample_rate: int | None = None,
        height: int | None = None,
        width: int | None = None,
        fps: float = 25,
        num_frames: int | None = None,
        num_frames_per_window: int | None = None,
        num_motion_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        audio_guidance_scale: float | None = None,
        guidance_end: float | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int | None = None,
        enhance_prompt: bool = False,
        mirrored_negative_prompt: bool | None = None,
    ):
        r"""
        Generates the video window by window, as [`SyncDreamerWindowOutput`]s in order: each window's new frames
        (decoded once, as soon as the window is denoised) and the span of audio they cover, so that a caller can
        show or write them while later windows are still being denoised; memory stays bounded by the window. Takes
        `__call__`'s arguments but `return_dict`; the windows' frames and audio concatenate to `__call__`'s output.
        Errors in the arguments are raised when the first window is requested.

        Examples:
            ```py
            >>> for window in pipe.stream(image="examples/reference.png", audio="examples/speech.wav", prompt="nod"):
            ...     print(window.first_frame, window.frames.shape)  # (1, F_w, H, W, 3)
            ```
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if num_inference_steps is None:
            num_inference_steps = self.config.default_num_inference_steps
        if max_sequence_length is None:
            max_sequence_length = self.config.default_max_sequence_length
        guidance_scale = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        if audio_guidance_scale is None:
            audio_guidance_scale = self.config.default_audio_guidance_scale
        guidance_end = self.config.default_guidance_end if guidance_end is None else guidance_end
        height = self.config.default_height if height is None else height
        width = self.config.default_width if width is None else width
        if num_frames_per_window is None:
            num_frames_per_window = self.config.num_frames_per_window
        if num_motion_frames is None:
            num_motion_frames = self.config.num_motion_frames
        images = [load_image(one) for one in (image if isinstance(image, list) else [image])]

        # 1. Check inputs
        self.check_inputs(
            prompt,
            negative_prompt,
            images,
            height,
            width,
            fps,
            num_frames,
            num_frames_per_window,
            num_motion_frames,
            num_inference_steps,
            guidance_scale,
            audio_guidance_scale,
            output_type,
            prompt_embeds,
            negative_prompt_embeds,
            callback_on_step_end_tensor_inputs,
            guidance_end=guidance_end,
            num_videos_per_prompt=num_videos_per_prompt,
            latents=latents,
            image_embeds=image_embeds,
            audio_embeds=audio_embeds,
        )
        if mirrored_negative_prompt and (negative_prompt is not None or negative_prompt_embeds is not None):
            raise ValueError("`mirrored_negative_prompt=True` writes the negative prompt; pass no `negative_prompt`.")
        if enhance_prompt:
            if self.prompt_enhancer is None:
                raise ValueError(
                    "`enhance_prompt=True` needs a `prompt_enhancer` component: load one with "
                    "`SyncDreamerPromptEnhancer.from_pretrained(...)` and pass it to `from_pretrained(..., "
                    "prompt_enhancer=...)`."
                )
            if prompt is None:
                raise ValueError("`enhance_prompt=True` rewrites `prompt`; it cannot rewrite `prompt_embeds`.")
            prompts = [prompt] if isinstance(prompt, str) else prompt
            prompt = self.prompt_enhancer.enhance(images * len(prompts) if len(images) == 1 else images, prompts)
        if mirrored_negative_prompt is None:
            mirrored_negative_prompt = self.config.default_mirrored_negative_prompt
        if mirrored_negative_prompt and prompt is not None and negative_prompt is None and negative_prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else prompt
            negative_prompt = [mirrored_prompt(one) if SIDE_WORDS.search(one) else "" for one in prompts]
        waveform = load_audio(audio, sample_rate)
        if num_frames is None:
            num_frames = round(len(waveform) / AUDIO_SAMPLE_RATE * fps)
            if num_frames < 1:
                raise ValueError(
                    f"`audio` lasts {len(waveform) / AUDIO_SAMPLE_RATE:.3f} s, shorter than one frame at {fps} fps; "
                    "pass longer audio."
                )
        waveform = np.pad(waveform, (0, max(0, round(num_frames / fps * AUDIO_SAMPLE_RATE) - len(waveform))))
        waveform = waveform[: round(num_frames / fps * AUDIO_SAMPLE_RATE)]

        self._guidance_scale = guidance_scale
        self._audio_guidance_scale = audio_guidance_scale
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        device = self._execution_device
        transformer_dtype = self.transformer.dtype

        # 2. Encode the prompt, the reference image (identity tokens and first latent frame)
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            negative_prompt,
            self.do_classifier_free_guidance,
            num_videos_per_prompt=num_videos_per_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            max_sequence_length=max_sequence_length,
            device=device,
        )
        batch_size = prompt_embeds.shape[0]
        self.check_memory(
            batch_size, height, width, num_frames, num_frames_per_window, num_motion_frames, guidance_scale,
            output_type, device,
        )
        identity_embeds = self.repeat_to_batch(self.encode_image(images, device, image_embeds), batch_size)
        identity_embeds = identity_embeds.to(transformer_dtype)  # (B N, K, identity_dim)
        reference_latents = self.repeat_to_batch(self.encode_reference(images, height, width, device), batch_size)

        # The passes that hear the audio run as one batch: the prompt, and the negative prompt for text guidance;
        # the pass without audio uses the negative prompt when text guidance is on, else the prompt.
        prompt_embeds = prompt_embeds.to(transformer_dtype)
        if self.do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_embeds.to(transformer_dtype)
            guided_audio_pass_text = torch.cat([prompt_embeds, negative_prompt_embeds])
        num_guided_steps = round(guidance_end * num_inference_steps) if self.do_classifier_free_guidance else 0

        # 3. Plan the windows
        window_latent_frames, window_starts, num_latent_frames = self.plan_windows(
            num_frames, num_frames_per_window, num_motion_frames
        )
        window_num_frames = (window_latent_frames - 1) * self.vae_scale_factor_temporal + 1
        num_motion_latents = num_motion_frames // self.vae_scale_factor_temporal
        self._num_timesteps = num_inference_steps * len(window_starts)
        # with the reference sink, each window has one extra leading latent frame
        num_sink_frames = int(self.config.reference_sink)
        num_window_latents = num_sink_frames + window_latent_frames
        window_noise = None if latents is None else self.split_latents(
            latents, batch_size, len(window_starts), num_window_latents, height, width
        )
        if audio_embeds is not None and audio_embeds.shape[1] < num_latent_frames:
            raise ValueError(
                f"`audio_embeds` covers {audio_embeds.shape[1]} latent frames but the video has {num_latent_frames} "
                f"({num_frames} frames); pass the audio tokens of the whole video."
            )

        if prompt is not None:  # one per video
            prompts = [prompt] if isinstance(prompt, str) else prompt
            prompt = [text for text in prompts for _ in range(num_videos_per_prompt)]

        # 4. Denoise window by window; decode and yield each window's new frames
        num_emitted_latents, num_emitted_frames, context_latents = 0, 0, None
        known_latents = reference_latents
        with self.progress_bar(total=self._num_timesteps) as progress_bar:
            for window_index, window_start in enumerate(window_starts):
                if audio_embeds is None:
                    window_audio_embeds = self.encode_audio(
                        waveform, fps, window_start * self.vae_scale_factor_temporal, window_num_frames, device
                    )  # (1, T, N_tok, audio_dim)
                else:
                    window_audio_embeds = self.slice_audio_embeds(audio_embeds, window_start, window_latent_frames)
                window_audio_embeds = window_audio_embeds.to(device=device, dtype=transformer_dtype)
                window_known_latents = known_latents
                if num_sink_frames:
                    window_known_latents = self.add_reference_sink(reference_latents, known_latents)  # (B, 16, 1 + k, h, w)
                    window_audio_embeds = self.add_sink_audio(window_audio_embeds)  # (1, 1 + T, N_tok, audio_dim)
                window_audio_embeds = self.repeat_to_batch(window_audio_embeds, batch_size)  # (B N, T, N_tok, D)
                condition = self.prepare_condition(window_known_latents, num_window_latents)
                latents = self.prepare_latents(
                    batch_size, num_window_latents, height, width, generator, device,
                    latents=None if window_noise is None else window_noise[window_index],
                )
                self.scheduler.set_timesteps(num_inference_steps, device=device)
                if self.transformer.is_cache_enabled:  # a cache hook's state belongs to one window's steps
                    self.transformer._reset_stateful_cache()

                for i, t in enumerate(self.scheduler.timesteps):
                    if self.interrupt:
                        continue
                    self._current_timestep = t
                    latent_model_input = torch.cat([latents, condition], dim=1).to(transformer_dtype)
                    timestep = t.expand(latents.shape[0])
                    text_guided = i < num_guided_steps
                    if text_guided:
                        audio_pass_text, silent_pass_text = guided_audio_pass_text, negative_prompt_embeds
                    else:
                        audio_pass_text = silent_pass_text = prompt_embeds
                    num_audio_passes = audio_pass_text.shape[0] // batch_size
                    # a cache hook (`enable_cache`) keeps one state per context: one per kind of pass
                    cache_suffix = "" if text_guided else "_prompt_only"

                    with self.transformer.cache_context("audio" + cache_suffix):
                        noise_pred = self.transformer(
                            hidden_states=latent_model_input.repeat(num_audio_passes, 1, 1, 1, 1),
                            timestep=timestep.repeat(num_audio_passes),
                            encoder_hidden_states=audio_pass_text,
                            identity_embeds=identity_embeds.repeat(num_audio_passes, 1, 1),
                            audio_embeds=window_audio_embeds.repeat(num_audio_passes, 1, 1, 1),
                            attention_kwargs=attention_kwargs,
                            return_dict=False,
                        )[0]
                    if text_guided:
                        noise_cond, noise_with_audio = noise_pred.chunk(2)
                        noise_pred = noise_with_audio + guidance_scale * (noise_cond - noise_with_audio)
                    else:
                        noise_with_audio = noise_pred
                    if self.do_audio_guidance:
                        with self.transformer.cache_context("silent" + cache_suffix):
                            noise_silent = self.transformer(
                                hidden_states=latent_model_input,
                                timestep=timestep,
                                encoder_hidden_states=silent_pass_text,
                                identity_embeds=identity_embeds,
                                audio_embeds=None,
                                attention_kwargs=attention_kwargs,
                                return_dict=False,
                            )[0]
                        noise_pred = noise_pred + (audio_guidance_scale - 1) * (noise_with_audio - noise_silent)

                    latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

                    if callback_on_step_end is not None:
                        callback_kwargs = {}
                        for name in callback_on_step_end_tensor_inputs:
                            callback_kwargs[name] = locals()[name]
                        step = window_index * num_inference_steps + i
                        callback_outputs = callback_on_step_end(self, step, t, callback_kwargs)
                        latents = callback_outputs.pop("latents", latents)
                    progress_bar.update()

                latents = latents[:, :, num_sink_frames:]  # the sink frame is conditioning only
                # the first latent frames of a later window are the carried motion latents: keep the earlier copy
                new_latents = latents if window_index == 0 else latents[:, :, num_motion_latents:]
                new_latents = new_latents[:, :, : num_latent_frames - num_emitted_latents]
                known_latents = latents[:, :, -num_motion_latents:]

                # 5. Decode the window's new latents (once) and hand them out with the span of audio they cover
                num_emitted_latents += new_latents.shape[2]
                # latent frame 0 holds video frame 0, every later one s frames
                num_covered_frames = min(num_frames, (num_emitted_latents - 1) * self.vae_scale_factor_temporal + 1)
                if output_type == "latent":
                    frames = new_latents
                else:
                    video = self.decode_window(new_latents, context_latents)[:, :, : num_covered_frames - num_emitted_frames]
                    frames = self.video_processor.postprocess_video(video, output_type)
                yield SyncDreamerWindowOutput(
                    frames=frames,
                    audio=waveform[round(num_emitted_frames / fps * AUDIO_SAMPLE_RATE) : round(num_covered_frames / fps * AUDIO_SAMPLE_RATE)],
                    first_frame=num_emitted_frames,
                    window_index=window_index,
                    num_windows=len(window_starts),
                    prompt=prompt,
                )
                num_emitted_frames = num_covered_frames
                context_latents = known_latents

                if self.config.motion_latent_noise > 0:
                    noise = randn_tensor(known_latents.shape, generator=generator, device=device, dtype=known_latents.dtype)
                    sigma = known_latents.new_full((known_latents.shape[0],), self.config.motion_latent_noise)
                    known_latents = add_flow_noise(known_latents, noise, sigma)
        self._current_timestep = None
        self.maybe_free_model_hooks()
