"""SyncDreamerPipeline: reference image + driving audio + text prompt -> talking-avatar video.

Shaped like diffusers' `WanImageToVideoPipeline`. What is new:

- identity: the reference image goes through an image encoder (CLIP/SigLIP vision model) and the visual adapter
  into K identity tokens that every transformer block cross-attends to, in every window;
- audio: Wav2Vec2 hidden states of the window's audio -> audio dynamics encoder -> audio tokens per latent frame;
- guidance: separate text and audio scales. The passes that hear the audio (with the prompt, with the negative
  prompt) run as one batch; the pass without audio drops it with `audio_embeds=None`, as in training;
- long audio: the video is generated in windows of `num_frames_per_window` frames. Window 0 knows the reference
  image as its first latent frame; window w > 0 knows the last `num_motion_frames // s` latent frames of window
  w - 1 (carried as latents, never decoded and re-encoded) and generates the rest. The windows' latents are
  stitched into one latent sequence, decoded once, and trimmed to exactly round(duration x fps) frames.

Frame counts follow the VAE's temporal compression s = `vae.config.scale_factor_temporal` (4 for Wan): windows
have sk + 1 frames, one latent frame per s video frames after the first.

Audio is encoded per window (the window's own samples through Wav2Vec2), so memory does not grow with the audio
length; what does grow is only the stitched latents, the audio tokens and the output video itself.
"""

import math
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

from .media import AUDIO_SAMPLE_RATE, load_audio, load_image
from .models.audio_dynamics import AudioDynamicsEncoder
from .models.autoencoder_frame import SyncDreamerFrameAutoencoder
from .models.transformer_syncdreamer import SyncDreamerTransformer3DModel
from .models.visual_adapter import SyncDreamerVisualAdapter
from .prompt_enhancer import SyncDreamerPromptEnhancer

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("np", "pt", "pil", "latent")
# Written by a LoRA run of training_scripts/train_syncdreamer.py: the identity/audio branches, trained in full.
NEW_BRANCHES_FILE = "transformer_new_branches.safetensors"

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


def prompt_clean(text: str) -> str:
    return " ".join(text.split())


class SyncDreamerPipeline(DiffusionPipeline, WanLoraLoaderMixin):
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
        default_audio_guidance_scale (`float`, defaults to 4.0): the sampling settings when not given (a small
            model may want other scales than a large one).
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
        )
        self.vae_scale_factor_temporal = self.vae.config.scale_factor_temporal
        self.vae_scale_factor_spatial = self.vae.config.scale_factor_spatial
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)

    @classmethod
    def _maybe_expand_t2v_lora_for_i2v(cls, transformer, state_dict):
        """Wan's loader pads T2V LoRAs for the Wan2.1-I2V image branch; our transformer has none (identity goes
        through its own cross-attention), so a LoRA state dict is loaded as it is."""
        return state_dict

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
            _, unexpected = self.transformer.load_state_dict(load_file(path / NEW_BRANCHES_FILE), strict=False)
            if unexpected:
                raise ValueError(f"{NEW_BRANCHES_FILE} has weights the transformer lacks: {unexpected[:3]}")
        return self

    def _get_t5_prompt_embeds(self, prompt: list[str], max_sequence_length: int, device, dtype) -> torch.Tensor:
        """`prompt` (B strings) -> `(B, max_sequence_length, text_dim)`, zero past each prompt's tokens (as Wan)."""
        text_inputs = self.tokenizer(
            [prompt_clean(text) for text in prompt],
            padding="max_length",
            max_length=max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        input_ids, mask = text_inputs.input_ids.to(device), text_inputs.attention_mask.to(device)
        prompt_embeds = self.text_encoder(input_ids, mask).last_hidden_state
        return (prompt_embeds * mask.unsqueeze(-1)).to(dtype=dtype)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int = 512,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns `prompt_embeds (B, L, text_dim)` and, with guidance, `negative_prompt_embeds` (same shape;
        the negative prompt defaults to the empty string)."""
        device = device or self._execution_device
        dtype = dtype or self.text_encoder.dtype
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
        return prompt_embeds, negative_prompt_embeds

    def encode_image_hidden_states(self, images: list[PIL.Image.Image], device: torch.device) -> torch.Tensor:
        """Reference images -> the image encoder's last hidden state `(B, N_img, D_img)` (frozen; cached by
        `syncdreamer preprocess` for training)."""
        pixel_values = self.image_processor(images=images, return_tensors="pt").pixel_values
        pixel_values = pixel_values.to(device=device, dtype=self.image_encoder.dtype)
        return self.image_encoder(pixel_values=pixel_values).last_hidden_state

    def encode_image(self, images: list[PIL.Image.Image], device: torch.device) -> torch.Tensor:
        """Reference images -> identity tokens `(B, K, identity_dim)` through the visual adapter."""
        image_embeds = self.encode_image_hidden_states(images, device)
        return self.visual_adapter(image_embeds.to(self.visual_adapter.dtype))

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
        mean = torch.tensor(self.vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
        std = torch.tensor(self.vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents)
        return (latents - mean) / std

    def preprocess_frames(self, frames: list[PIL.Image.Image], height: int, width: int) -> torch.Tensor:
        """Images (the reference, or a clip's frames) -> `(1, 3, F, H, W)` in [-1, 1]: resized to cover
        `height` x `width` and centre-cropped. Training data goes through the same function."""
        return self.video_processor.preprocess(frames, height=height, width=width, resize_mode="crop").transpose(0, 1)[None]

    def encode_reference(self, images: list[PIL.Image.Image], height: int, width: int, device) -> torch.Tensor:
        """Reference images -> normalised VAE latents `(B, 16, 1, H/8, W/8)`, the known first latent frame."""
        pixels = torch.cat([self.preprocess_frames([image], height, width) for image in images])  # (B, 3, 1, H, W)
        return self.encode_video(pixels.to(device))

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

    def prepare_latents(self, batch_size: int, num_latent_frames: int, height: int, width: int, generator, device):
        """Gaussian noise `(B, 16, T, H/8, W/8)` in float32."""
        shape = (
            batch_size,
            self.vae.config.z_dim,
            num_latent_frames,
            height // self.vae_scale_factor_spatial,
            width // self.vae_scale_factor_spatial,
        )
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

    def decode_latents(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Normalised latents `(B, 16, T, h, w)` -> frames `(B, 3, num_frames, H, W)` in [-1, 1]."""
        latents = latents.to(device=self.vae.device, dtype=self.vae.dtype)
        mean = torch.tensor(self.vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
        std = torch.tensor(self.vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents)
        video = self.vae.decode(latents * std + mean, return_dict=False)[0]
        return video[:, :, :num_frames]

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
    ):
        multiple = self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]
        if height <= 0 or width <= 0 or height % multiple or width % multiple:
            raise ValueError(f"`height` and `width` must be positive multiples of {multiple}; got {height}x{width}.")
        if fps <= 0:
            raise ValueError(f"`fps` must be positive (e.g. 25); got {fps}.")
        stride = self.vae_scale_factor_temporal
        if self.audio_dynamics_encoder.config.temporal_stride != stride:
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
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int = 512,
        enhance_prompt: bool = False,
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
            generator: a `torch.Generator` (or one per prompt) for deterministic noise.
            prompt_embeds, negative_prompt_embeds: precomputed umT5 embeddings `(B, L, text_dim)`.
            output_type: `"np"`, `"pt"`, `"pil"` or `"latent"`.
            return_dict: return a [`SyncDreamerPipelineOutput`] instead of a tuple `(frames, audio)`.
            attention_kwargs: passed to the transformer (`{"scale": s}` scales LoRA layers).
            callback_on_step_end: called after every denoising step as
                `callback_on_step_end(pipe, step, timestep, callback_kwargs)`; `step` counts across windows.
            callback_on_step_end_tensor_inputs: the tensors passed in `callback_kwargs`.
            max_sequence_length: umT5 tokens per prompt.
            enhance_prompt: rewrite each prompt with the `prompt_enhancer` (Qwen2-VL, greedy) into a motion
                instruction grounded in its reference image; the text used is returned in `output.prompt`.

        Examples:
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if num_inference_steps is None:
            num_inference_steps = self.config.default_num_inference_steps
        guidance_scale = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        if audio_guidance_scale is None:
            audio_guidance_scale = self.config.default_audio_guidance_scale
        height = height or self.config.default_height
        width = width or self.config.default_width
        num_frames_per_window = num_frames_per_window or self.config.num_frames_per_window
        num_motion_frames = num_motion_frames or self.config.num_motion_frames
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
        )
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
            prompt_embeds,
            negative_prompt_embeds,
            max_sequence_length,
            device,
        )
        batch_size = prompt_embeds.shape[0]
        identity_embeds = self.encode_image(images, device).to(transformer_dtype)
        identity_embeds = identity_embeds.expand(batch_size, -1, -1)
        reference_latents = self.encode_reference(images, height, width, device).expand(batch_size, -1, -1, -1, -1)

        # The passes that hear the audio run as one batch: the prompt, and the negative prompt for text guidance;
        # the pass without audio uses the negative prompt when text guidance is on, else the prompt.
        if self.do_classifier_free_guidance:
            audio_pass_text = torch.cat([prompt_embeds, negative_prompt_embeds]).to(transformer_dtype)
            silent_pass_text = negative_prompt_embeds.to(transformer_dtype)
        else:
            audio_pass_text = silent_pass_text = prompt_embeds.to(transformer_dtype)
        num_audio_passes = audio_pass_text.shape[0] // batch_size

        # 3. Plan the windows
        window_latent_frames, window_starts, num_latent_frames = self.plan_windows(
            num_frames, num_frames_per_window, num_motion_frames
        )
        window_num_frames = (window_latent_frames - 1) * self.vae_scale_factor_temporal + 1
        num_motion_latents = num_motion_frames // self.vae_scale_factor_temporal
        self._num_timesteps = num_inference_steps * len(window_starts)

        # 4. Denoise window by window
        stitched_latents = []
        known_latents = reference_latents
        with self.progress_bar(total=self._num_timesteps) as progress_bar:
            for window_index, window_start in enumerate(window_starts):
                audio_embeds = self.encode_audio(
                    waveform, fps, window_start * self.vae_scale_factor_temporal, window_num_frames, device
                ).to(transformer_dtype)  # (1, T, N_tok, audio_dim)
                audio_embeds = audio_embeds.expand(batch_size * num_audio_passes, -1, -1, -1)
                condition = self.prepare_condition(known_latents, window_latent_frames)
                latents = self.prepare_latents(batch_size, window_latent_frames, height, width, generator, device)
                self.scheduler.set_timesteps(num_inference_steps, device=device)

                for i, t in enumerate(self.scheduler.timesteps):
                    if self.interrupt:
                        continue
                    self._current_timestep = t
                    latent_model_input = torch.cat([latents, condition], dim=1).to(transformer_dtype)
                    timestep = t.expand(latents.shape[0])

                    with self.transformer.cache_context("audio"):
                        noise_pred = self.transformer(
                            hidden_states=latent_model_input.repeat(num_audio_passes, 1, 1, 1, 1),
                            timestep=timestep.repeat(num_audio_passes),
                            encoder_hidden_states=audio_pass_text,
                            identity_embeds=identity_embeds.repeat(num_audio_passes, 1, 1),
                            audio_embeds=audio_embeds,
                            attention_kwargs=attention_kwargs,
                            return_dict=False,
                        )[0]
                    if self.do_classifier_free_guidance:
                        noise_cond, noise_with_audio = noise_pred.chunk(2)
                        noise_pred = noise_with_audio + guidance_scale * (noise_cond - noise_with_audio)
                    else:
                        noise_with_audio = noise_pred
                    if self.do_audio_guidance:
                        with self.transformer.cache_context("silent"):
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

                # the first latent frames of a later window are the carried motion latents: keep the earlier copy
                stitched_latents.append(latents if window_index == 0 else latents[:, :, num_motion_latents:])
                known_latents = latents[:, :, -num_motion_latents:]
        self._current_timestep = None
        latents = torch.cat(stitched_latents, dim=2)[:, :, :num_latent_frames]

        # 5. Decode the stitched latents once
        if output_type == "latent":
            video = latents
        else:
            video = self.video_processor.postprocess_video(self.decode_latents(latents, num_frames), output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return video, waveform
        prompt = [prompt] if isinstance(prompt, str) else prompt
        return SyncDreamerPipelineOutput(frames=video, audio=waveform, prompt=prompt)
