"""The trained models (transformer, visual adapter, audio dynamics encoder; optionally the text encoder) as one
`nn.Module`, so that accelerate wraps them (DDP, FSDP) once and one forward call runs text encoder -> adapter ->
audio encoder -> transformer."""

from contextlib import contextmanager

import torch
import torch.nn as nn
from transformers import UMT5EncoderModel

from ..models.audio_dynamics import AudioDynamicsEncoder
from ..models.transformer_syncdreamer import SyncDreamerTransformer3DModel
from ..models.visual_adapter import SyncDreamerVisualAdapter
from ..pipeline_syncdreamer import SyncDreamerPipeline

# The pipeline's components that training changes; every other component is frozen (and cached by preprocessing),
# except the text encoder of a `train_text_encoder` run (the tiny recipe's: its umT5 is random, not pretrained).
TRAINED_COMPONENTS = ("transformer", "visual_adapter", "audio_dynamics_encoder")
TEXT_ENCODER = "text_encoder"


class SyncDreamerTrainingModule(nn.Module):
    """The trained models of a SyncDreamer pipeline, with what is trained decided by `set_trainable`."""

    def __init__(self, transformer, visual_adapter, audio_dynamics_encoder, text_encoder=None):
        super().__init__()
        self.transformer = transformer
        self.visual_adapter = visual_adapter
        self.audio_dynamics_encoder = audio_dynamics_encoder
        self.text_encoder = text_encoder  # None: prompts arrive as the cache's frozen embeddings

    @classmethod
    def from_pretrained(
        cls, pipeline, transformer_dtype: torch.dtype = torch.float32, train_text_encoder: bool = False
    ) -> "SyncDreamerTrainingModule":
        """Loads the trained models of a pipeline folder or Hub id (the frozen encoders are not needed; the text
        encoder only with `train_text_encoder`). `transformer_dtype`: a LoRA run loads the frozen base directly in
        the mixed-precision dtype (the modules the model keeps in float32 stay float32)."""
        text_encoder = None
        if train_text_encoder:
            # no dropout: it would draw from the global RNG, and a resumed run would not repeat the straight one
            text_encoder = UMT5EncoderModel.from_pretrained(pipeline, subfolder=TEXT_ENCODER, dropout_rate=0.0)
        return cls(
            SyncDreamerTransformer3DModel.from_pretrained(pipeline, subfolder="transformer", dtype=transformer_dtype),
            SyncDreamerVisualAdapter.from_pretrained(pipeline, subfolder="visual_adapter"),
            AudioDynamicsEncoder.from_pretrained(pipeline, subfolder="audio_dynamics_encoder"),
            text_encoder,
        )

    @property
    def component_names(self) -> tuple[str, ...]:
        """The pipeline components this module holds."""
        return TRAINED_COMPONENTS + ((TEXT_ENCODER,) if self.text_encoder is not None else ())

    def set_trainable(self, stage: int, lora_rank: int = 0, lora_alpha: float | None = None) -> None:
        """Full fine-tuning (`lora_rank=0`), or peft LoRA layers on the transformer's Wan part
        (`transformer.lora_target_modules`) with its new branches trained in full. The visual adapter always trains;
        in stage 1 (audio off) the audio dynamics encoder and the transformer's audio branch stay frozen."""
        if lora_rank > 0:
            from peft import LoraConfig

            self.transformer.requires_grad_(False)
            self.transformer.add_adapter(
                LoraConfig(
                    r=lora_rank,
                    lora_alpha=lora_alpha or lora_rank,
                    init_lora_weights=True,
                    target_modules=self.transformer.lora_target_modules,
                )
            )
            for parameter in self.transformer.new_branch_parameters():
                parameter.requires_grad_(True)
        else:
            self.transformer.requires_grad_(True)
        self.visual_adapter.requires_grad_(True)
        if self.text_encoder is not None:
            self.text_encoder.requires_grad_(True)
        self.audio_dynamics_encoder.requires_grad_(stage == 2)
        if stage == 1:
            for parameter in self.transformer.audio_branch_parameters():
                parameter.requires_grad_(False)

    @property
    def is_lora(self) -> bool:
        return bool(getattr(self.transformer, "peft_config", None))

    def fully_trained_components(self) -> list[str]:
        """The models saved whole: every one with a trainable parameter, except a LoRA run's transformer (whose
        LoRA layers and new branches are saved instead)."""
        return [
            name
            for name in self.component_names
            if not (name == "transformer" and self.is_lora)
            and any(parameter.requires_grad for parameter in getattr(self, name).parameters())
        ]

    def forward(
        self,
        model_input,
        timesteps,
        prompt_embeds,
        image_embeds,
        audio_hidden_states,
        return_identity_attention=False,
        num_sink_frames=0,
        prompt_tokens=None,
    ):
        """`image_embeds` / `audio_hidden_states` set to None drop identity / audio (the branch gets None). The
        audio spans the video frames of `model_input`'s T latent frames after its `num_sink_frames` reference sink
        frames (0 or 1): (T - 1) * temporal_stride + 1; the sink frame gets silent audio tokens.

        Args:
            model_input (`(B, 36, T, h, w)`): noisy latents | mask | condition latents.
            timesteps (`(B,)`): in [0, 1000].
            prompt_embeds (`(B, L, text_dim)`), image_embeds (`(B, N_img, D_img)`), audio_hidden_states
                (`(B, L_a, N_a, D_a)`): the cached encoder outputs.
            prompt_tokens: `(input_ids, attention_mask)`, each `(B, L)` (`SyncDreamerPipeline.tokenize_prompts`):
                with a text encoder, the prompt embeddings are computed from them instead (`prompt_embeds` unused).

        Returns:
            `(velocity (B, 16, T, h, w), identity_attention)`.
        """
        if self.text_encoder is not None:
            prompt_embeds = SyncDreamerPipeline.embed_prompt_tokens(self.text_encoder, *prompt_tokens)
        identity_embeds = self.visual_adapter(image_embeds).identity_embeds if image_embeds is not None else None
        audio_embeds = None
        if audio_hidden_states is not None:
            num_latent_frames = model_input.shape[2] - num_sink_frames
            num_frames = (num_latent_frames - 1) * self.audio_dynamics_encoder.config.temporal_stride + 1
            audio_embeds = self.audio_dynamics_encoder(audio_hidden_states, num_frames).audio_embeds
            if num_sink_frames:
                audio_embeds = SyncDreamerPipeline.add_sink_audio(audio_embeds)
        output = self.transformer(
            hidden_states=model_input,
            timestep=timesteps,
            encoder_hidden_states=prompt_embeds,
            identity_embeds=identity_embeds,
            audio_embeds=audio_embeds,
            return_identity_attention=return_identity_attention and identity_embeds is not None,
        )
        return output.sample, output.identity_attention


@contextmanager
def gathered_for_inference(accelerator, module: nn.Module):
    """Lets code call the submodules of a prepared `module` directly, as the pipeline does in validation. Under FSDP2
    the root's own parameters (all but the separately wrapped transformer blocks) stay sharded between forward calls
    of the root: they are gathered here and resharded after (collective: every rank must enter). Otherwise a no-op."""
    if not accelerator.is_fsdp2:
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()
