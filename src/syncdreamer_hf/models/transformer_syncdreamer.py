"""SyncDreamer's video Diffusion Transformer: a Wan2.1 transformer with identity and audio cross-attention.

Each block is a `WanTransformerBlock` (self-attention, text cross-attention, feed-forward) with two new branches
between the text cross-attention and the feed-forward:

- visual cross-attention from every video token to the K identity tokens of the visual adapter;
- frame-local audio cross-attention: the tokens of latent frame j attend only to the audio tokens of latent frame j.

Both branches end in a zero-initialised output projection and the extra input channels of the patch embedding are
zero-padded, so a freshly converted model (`SyncDreamerTransformer3DModel.from_wan`) reproduces the Wan model exactly.
"""

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import init_empty_weights
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.loaders import PeftAdapterMixin
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.attention import AttentionMixin, FeedForward
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import PixArtAlphaTextProjection
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    WanAttnProcessor,
    WanRotaryPosEmbed,
    WanTimeTextImageEmbedding,
    WanTransformer3DModel,
    _get_qkv_projections,
)
from diffusers.utils import BaseOutput, apply_lora_scale, logging
from diffusers.utils.torch_utils import maybe_allow_in_graph

from ..model_cards import ModelCardMixin


logger = logging.get_logger(__name__)

# Modules that `WanTransformer3DModel` does not have: they start from scratch in `from_wan`. Read them through
# `SyncDreamerTransformer3DModel.new_branch_modules()` / `.audio_branch_modules()`.
NEW_BRANCH_MODULES = ("identity_embedder", "audio_embedder", "norm_identity", "attn_identity", "norm_audio", "attn_audio",
                      "position_embedding")
AUDIO_BRANCH_MODULES = ("audio_embedder", "norm_audio", "attn_audio")


@dataclass
class SyncDreamerTransformerOutput(BaseOutput):
    """
    Args:
        sample (`torch.Tensor` of shape `(B, out_channels, T, H, W)`): the predicted velocity.
        identity_attention (`tuple[torch.Tensor]`, *optional*): one `(B, N, K)` tensor per localization layer,
            the visual cross-attention probabilities (softmax over the K identity tokens, mean over heads) of the
            N video tokens; only when `return_identity_attention=True`.
    """

    sample: torch.Tensor
    identity_attention: tuple[torch.Tensor, ...] | None = None


class SyncDreamerIdentityAttnProcessor:
    """Cross-attention to the identity tokens that can also return its attention probabilities.

    With `return_probs=False` it is the same computation as `WanAttnProcessor` through `dispatch_attention_fn`
    (any attention backend). With `return_probs=True` it computes softmax(QK^T) explicitly and returns
    `(output, probs)` with probs `(B, N, K)` averaged over heads, for the attention localization loss.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_probs: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))  # (B, N, heads, head_dim)
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))  # (B, K, heads, head_dim)
        value = value.unflatten(2, (attn.heads, -1))

        probs = None
        if return_probs:
            scores = torch.einsum("bnhd,bkhd->bhnk", query, key) * query.shape[-1] ** -0.5
            probs = scores.float().softmax(dim=-1).type_as(query)  # (B, heads, N, K)
            hidden_states = torch.einsum("bhnk,bkhd->bnhd", probs, value)
            probs = probs.mean(dim=1)
        else:
            hidden_states = dispatch_attention_fn(
                query, key, value, attn_mask=attention_mask, backend=self._attention_backend
            )
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        return (hidden_states, probs) if return_probs else hidden_states


class SyncDreamerPositionEmbedding(nn.Module):
    """A learned embedding per position of the token grid (row, column), added to the patch embeddings of every frame.

    RoPE tells attention how far apart two tokens are, not where in the frame a token is: with a reference that is
    left-right symmetric, "the right hand" (the image's left side) has nothing to anchor to. Zero at initialisation,
    so a trained model that gets it starts out unchanged. Other grid sizes interpolate it bilinearly.
    """

    def __init__(self, grid_size: tuple[int, int], dim: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(1, dim, *grid_size))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.embedding)

    def forward(self, hidden_states: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
        """hidden_states `(B, T * h * w, D)` (frame-major, as the patch embedding flattens them) plus the embedding."""
        embedding = self.embedding
        if tuple(embedding.shape[-2:]) != (height, width):
            embedding = F.interpolate(embedding, size=(height, width), mode="bilinear", align_corners=False)
        embedding = embedding.flatten(2).transpose(1, 2).repeat(1, num_frames, 1)  # (1, T * h * w, D)
        return hidden_states + embedding.to(hidden_states.dtype)


@maybe_allow_in_graph
class SyncDreamerTransformerBlock(nn.Module):
    """Wan block + visual cross-attention to identity tokens + frame-local audio cross-attention."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
    ):
        super().__init__()
        head_dim = dim // num_heads

        # 1. Self-attention (as Wan)
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim=dim, heads=num_heads, dim_head=head_dim, eps=eps, processor=WanAttnProcessor())

        # 2. Text cross-attention (as Wan)
        self.attn2 = WanAttention(
            dim=dim, heads=num_heads, dim_head=head_dim, eps=eps, cross_attention_dim_head=head_dim,
            processor=WanAttnProcessor(),
        )
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()

        # 3. Visual cross-attention to the identity tokens (new)
        self.norm_identity = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.attn_identity = WanAttention(
            dim=dim, heads=num_heads, dim_head=head_dim, eps=eps, cross_attention_dim_head=head_dim,
            processor=SyncDreamerIdentityAttnProcessor(),
        )

        # 4. Frame-local audio cross-attention (new)
        self.norm_audio = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.attn_audio = WanAttention(
            dim=dim, heads=num_heads, dim_head=head_dim, eps=eps, cross_attention_dim_head=head_dim,
            processor=WanAttnProcessor(),
        )

        # 5. Feed-forward (as Wan)
        self.ffn = FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)

        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.zero_init_new_branches()

    @torch.no_grad()
    def zero_init_new_branches(self):
        """Zero the output projections of the new branches: the block then computes exactly a Wan block."""
        for attn in (self.attn_identity, self.attn_audio):
            attn.to_out[0].weight.zero_()
            attn.to_out[0].bias.zero_()

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        identity_tokens: torch.Tensor | None = None,
        audio_tokens: torch.Tensor | None = None,
        return_identity_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            hidden_states (`(B, N, D)`): video tokens, frame-major (N = T * h * w).
            encoder_hidden_states (`(B, L, D)`): projected text tokens.
            temb (`(B, 6, D)`): timestep modulation.
            identity_tokens (`(B, K, D)`, *optional*): projected identity tokens; `None` skips the branch.
            audio_tokens (`(B, T, N_tok, D)`, *optional*): projected audio tokens per latent frame; `None` skips.
            return_identity_attention: also return the identity attention probabilities `(B, N, K)`.
        """
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            self.scale_shift_table + temb.float()
        ).chunk(6, dim=1)

        # 1. Self-attention
        norm_hidden_states = (self.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa).type_as(hidden_states)
        attn_output = self.attn1(norm_hidden_states, None, None, rotary_emb)
        hidden_states = (hidden_states.float() + attn_output * gate_msa).type_as(hidden_states)

        # 2. Text cross-attention
        norm_hidden_states = self.norm2(hidden_states.float()).type_as(hidden_states)
        hidden_states = hidden_states + self.attn2(norm_hidden_states, encoder_hidden_states, None, None)

        # 3. Visual cross-attention to the identity tokens
        identity_probs = None
        if identity_tokens is not None:
            norm_hidden_states = self.norm_identity(hidden_states.float()).type_as(hidden_states)
            if return_identity_attention:
                attn_output, identity_probs = self.attn_identity(
                    norm_hidden_states, identity_tokens, None, None, return_probs=True
                )
            else:
                attn_output = self.attn_identity(norm_hidden_states, identity_tokens, None, None)
            hidden_states = hidden_states + attn_output

        # 4. Frame-local audio cross-attention: one attention problem per (sample, latent frame)
        if audio_tokens is not None:
            batch_size, num_frames = audio_tokens.shape[:2]
            norm_hidden_states = self.norm_audio(hidden_states.float()).type_as(hidden_states)
            frame_queries = norm_hidden_states.unflatten(1, (num_frames, -1)).flatten(0, 1)  # (B*T, h*w, D)
            frame_keys = audio_tokens.flatten(0, 1)  # (B*T, N_tok, D)
            attn_output = self.attn_audio(frame_queries, frame_keys, None, None)
            hidden_states = hidden_states + attn_output.unflatten(0, (batch_size, num_frames)).flatten(1, 2)

        # 5. Feed-forward
        norm_hidden_states = (self.norm3(hidden_states.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(
            hidden_states
        )
        ff_output = self.ffn(norm_hidden_states)
        hidden_states = (hidden_states.float() + ff_output.float() * c_gate_msa).type_as(hidden_states)

        if return_identity_attention:
            return hidden_states, identity_probs
        return hidden_states


# First-block caching (`enable_cache(FirstBlockCacheConfig(...))`) looks blocks up in this registry.
TransformerBlockRegistry.register(
    model_class=SyncDreamerTransformerBlock,
    metadata=TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None),
)


class SyncDreamerTransformer3DModel(
    ModelCardMixin, ModelMixin, ConfigMixin, PeftAdapterMixin, CacheMixin, AttentionMixin
):
    r"""
    The SyncDreamer video transformer: `WanTransformer3DModel` (Wan2.1) plus identity and audio cross-attention.

    The configuration is Wan's (minus the Wan2.1-I2V CLIP branch, replaced by the visual adapter) plus:

    Args:
        identity_dim (`int`, defaults to `1024`):
            Width of the identity tokens from [`SyncDreamerVisualAdapter`], `(B, K, identity_dim)`.
        audio_dim (`int`, defaults to `768`):
            Width of the audio tokens from [`AudioDynamicsEncoder`], `(B, T, N_tok, audio_dim)`.
        localization_layers (`list[int]`, *optional*):
            Blocks whose visual cross-attention probabilities are returned for the attention localization loss.
            Defaults to the middle third of the blocks (the mid-level blocks).
        position_embedding_grid (`tuple[int, int]`, *optional*):
            `(h, w)` of the token grid (latent size / patch size) of a learned position embedding added to every
            frame's tokens ([`SyncDreamerPositionEmbedding`], interpolated at other sizes). `None` (default, as Wan):
            RoPE only.

    The Wan arguments: `patch_size`, `num_attention_heads`, `attention_head_dim`, `in_channels` (36 by default:
    16 noisy latents + 4 mask + 16 condition latents), `out_channels`, `text_dim`, `freq_dim`, `ffn_dim`,
    `num_layers`, `cross_attn_norm`, `qk_norm`, `eps`, `rope_max_seq_len`, as in [`WanTransformer3DModel`].
    """

    _supports_gradient_checkpointing = True
    _model_card_template = "transformer.md"
    _skip_layerwise_casting_patterns = ["patch_embedding", "condition_embedder", "norm"]
    _no_split_modules = ["SyncDreamerTransformerBlock"]
    _keep_in_fp32_modules = [
        "rope", "time_embedder", "scale_shift_table", "norm1", "norm2", "norm3", "norm_identity", "norm_audio"
    ]
    _keys_to_ignore_on_load_unexpected = ["norm_added_q"]
    _repeated_blocks = ["SyncDreamerTransformerBlock"]
    # As Wan; the audio tokens are split over frames like the video tokens, so that each rank keeps the audio of
    # its own frames (the frame-local audio attention needs T divisible by the context-parallel degree).
    _cp_plan = {
        "rope": {
            0: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
            1: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
        },
        "blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
        },
        "audio_embedder": {0: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
        "": {
            "timestep": ContextParallelInput(split_dim=1, expected_dims=2, split_output=False),
        },
    }

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 36,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        rope_max_seq_len: int = 1024,
        identity_dim: int = 1024,
        audio_dim: int = 768,
        localization_layers: list[int] | None = None,
        position_embedding_grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if qk_norm != "rms_norm_across_heads":
            raise ValueError(f"qk_norm={qk_norm!r} is not supported; Wan2.1 uses 'rms_norm_across_heads'.")
        inner_dim = num_attention_heads * attention_head_dim
        if localization_layers is None:
            localization_layers = list(range(num_layers // 3, max(2 * num_layers // 3, num_layers // 3 + 1)))
        if any(not 0 <= i < num_layers for i in localization_layers):
            raise ValueError(f"localization_layers {localization_layers} must index blocks 0..{num_layers - 1}.")
        self.localization_layers = sorted(localization_layers)

        # 1. Patch & position embedding
        self.rope = WanRotaryPosEmbed(attention_head_dim, patch_size, rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(in_channels, inner_dim, kernel_size=patch_size, stride=patch_size)
        self.position_embedding = (
            SyncDreamerPositionEmbedding(tuple(position_embedding_grid), inner_dim) if position_embedding_grid else None
        )

        # 2. Condition embeddings: timestep + text (as Wan), identity and audio tokens (new)
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=inner_dim, time_freq_dim=freq_dim, time_proj_dim=inner_dim * 6, text_embed_dim=text_dim
        )
        self.identity_embedder = PixArtAlphaTextProjection(identity_dim, inner_dim, act_fn="gelu_tanh")
        self.audio_embedder = PixArtAlphaTextProjection(audio_dim, inner_dim, act_fn="gelu_tanh")

        # 3. Transformer blocks
        self.blocks = nn.ModuleList(
            [
                SyncDreamerTransformerBlock(inner_dim, ffn_dim, num_attention_heads, cross_attn_norm, eps)
                for _ in range(num_layers)
            ]
        )

        # 4. Output norm & projection
        self.norm_out = FP32LayerNorm(inner_dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(inner_dim, out_channels * patch_size[0] * patch_size[1] * patch_size[2])
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, inner_dim) / inner_dim**0.5)

        self.gradient_checkpointing = False

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        identity_embeds: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_identity_attention: bool = False,
        return_dict: bool = True,
    ) -> SyncDreamerTransformerOutput | tuple:
        """
        Args:
            hidden_states (`(B, in_channels, T, H, W)`): noisy latents | mask | condition latents, channel-stacked.
            timestep (`(B,)`): flow-matching timesteps in [0, 1000].
            encoder_hidden_states (`(B, L, text_dim)`): umT5 text embeddings.
            identity_embeds (`(B, K, identity_dim)`, *optional*): visual adapter tokens; `None` drops identity.
            audio_embeds (`(B, T, N_tok, audio_dim)`, *optional*): audio tokens per latent frame; `None` drops audio.
            attention_kwargs (`dict`, *optional*): `{"scale": s}` scales LoRA layers.
            return_identity_attention: also return the visual cross-attention probabilities of the
                `localization_layers` (costs nothing when `False`; requires `identity_embeds`).
            return_dict: return a [`SyncDreamerTransformerOutput`] instead of a tuple.
        """
        batch_size, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        post_patch_num_frames, post_patch_height, post_patch_width = num_frames // p_t, height // p_h, width // p_w
        if audio_embeds is not None and audio_embeds.shape[1] != post_patch_num_frames:
            raise ValueError(
                f"audio_embeds has {audio_embeds.shape[1]} latent frames, the latents have {post_patch_num_frames}."
            )
        if return_identity_attention and identity_embeds is None:
            raise ValueError("return_identity_attention=True needs identity_embeds.")

        rotary_emb = self.rope(hidden_states)

        hidden_states = self.patch_embedding(hidden_states)
        hidden_states = hidden_states.flatten(2).transpose(1, 2).contiguous()  # (B, N, D), N = T * h * w
        if self.position_embedding is not None:
            hidden_states = self.position_embedding(
                hidden_states, post_patch_num_frames, post_patch_height, post_patch_width
            )

        temb, timestep_proj, encoder_hidden_states, _ = self.condition_embedder(timestep, encoder_hidden_states)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))  # (B, 6, D)
        identity_tokens = self.identity_embedder(identity_embeds) if identity_embeds is not None else None
        audio_tokens = self.audio_embedder(audio_embeds) if audio_embeds is not None else None

        identity_attention = []
        for index, block in enumerate(self.blocks):
            wants_probs = return_identity_attention and index in self.localization_layers
            block_args = (
                hidden_states, encoder_hidden_states, timestep_proj, rotary_emb, identity_tokens, audio_tokens,
                wants_probs,
            )
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                output = self._gradient_checkpointing_func(block, *block_args)
            else:
                output = block(*block_args)
            if wants_probs:
                hidden_states, probs = output
                identity_attention.append(probs)
            else:
                hidden_states = output

        # Output norm, projection & unpatchify
        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        shift, scale = shift.to(hidden_states.device), scale.to(hidden_states.device)
        hidden_states = (self.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)

        hidden_states = hidden_states.reshape(
            batch_size, post_patch_num_frames, post_patch_height, post_patch_width, p_t, p_h, p_w, -1
        )
        hidden_states = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6)
        output = hidden_states.flatten(6, 7).flatten(4, 5).flatten(2, 3)

        identity_attention = tuple(identity_attention) if return_identity_attention else None
        if not return_dict:
            return (output, identity_attention) if return_identity_attention else (output,)
        return SyncDreamerTransformerOutput(sample=output, identity_attention=identity_attention)

    # peft LoRA targets: the Wan part of every block (self- and text attention, feed-forward). The new branches are
    # not targeted: a LoRA run trains them in full (`new_branch_parameters()`).
    lora_target_modules = [
        *(f"{attn}.{proj}" for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v", "to_out.0")),
        "ffn.net.0.proj",
        "ffn.net.2",
    ]

    def new_branch_modules(self) -> dict[str, nn.Module]:
        """The modules Wan does not have, by qualified name: the identity and audio embedders, every block's
        identity/audio cross-attention with its norm, and the position embedding where there is one."""
        return {name: module for name, module in self.named_modules() if name.split(".")[-1] in NEW_BRANCH_MODULES}

    def audio_branch_modules(self) -> dict[str, nn.Module]:
        """The audio part of the new branches (audio embedder, every block's audio cross-attention and norm): frozen
        while the audio is off (training stage 1)."""
        return {name: module for name, module in self.named_modules() if name.split(".")[-1] in AUDIO_BRANCH_MODULES}

    def new_branch_parameters(self) -> list[nn.Parameter]:
        return [parameter for module in self.new_branch_modules().values() for parameter in module.parameters()]

    def audio_branch_parameters(self) -> list[nn.Parameter]:
        return [parameter for module in self.audio_branch_modules().values() for parameter in module.parameters()]

    def new_branch_state_dict(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The new branches' weights under their `state_dict()` names (detached, on CPU): what a LoRA run saves next
        to the LoRA layers (`load_new_branch_state_dict` reads it back). `state_dict`: take them from this full state
        dict of the model instead (e.g. one gathered from FSDP shards)."""
        prefixes = tuple(f"{name}." for name in self.new_branch_modules())
        state_dict = self.state_dict() if state_dict is None else state_dict
        return {key: tensor.detach().cpu().contiguous() for key, tensor in state_dict.items() if key.startswith(prefixes)}

    def load_new_branch_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Loads `new_branch_state_dict()` output; raises `ValueError` when its keys are not exactly this model's new
        branches (another size of model, or not a new-branch file)."""
        expected = set(self.new_branch_state_dict())
        if set(state_dict) != expected:
            unexpected, missing = sorted(set(state_dict) - expected), sorted(expected - set(state_dict))
            raise ValueError(
                f"The new-branch weights do not fit this transformer: unexpected {unexpected[:3]}, missing {missing[:3]}."
            )
        self.load_state_dict(state_dict, strict=False)

    @classmethod
    def from_wan(
        cls,
        wan: "WanTransformer3DModel | str | os.PathLike",
        *,
        subfolder: str | None = None,
        dtype: torch.dtype | None = None,
        **overrides,
    ) -> "SyncDreamerTransformer3DModel":
        """Build a SyncDreamer transformer from Wan2.1 weights.

        Args:
            wan: a `WanTransformer3DModel` (T2V, 16 input channels, or I2V, 36), or a local path / Hub id of one
                (with `subfolder="transformer"` for a full Wan pipeline repository).
            subfolder, dtype: passed to `WanTransformer3DModel.from_pretrained` when `wan` is a path.
            **overrides: config values for the new model, e.g. `identity_dim`, `audio_dim`, `in_channels`.

        Every Wan weight is copied; the patch embedding's missing input channels are zero-padded; the new
        branches keep their initialisation (zero output projections), so the result reproduces the Wan model.
        The Wan2.1-I2V CLIP image branch has no counterpart here (the visual adapter replaces it) and is dropped.
        """
        copy_weights = isinstance(wan, WanTransformer3DModel)
        if not copy_weights:
            wan = WanTransformer3DModel.from_pretrained(wan, subfolder=subfolder, dtype=dtype)
        own_keys = set(inspect.signature(cls.__init__).parameters) - {"self", "in_channels"}
        config = {key: value for key, value in wan.config.items() if key in own_keys}
        config.update(overrides)

        # Build without allocating the Wan-shaped weights, then materialise only the new branches.
        with init_empty_weights():
            model = cls(**config)
        for name, module in model.new_branch_modules().items():
            module.to_empty(device=wan.device)
            for submodule in module.modules():
                if hasattr(submodule, "reset_parameters"):
                    submodule.reset_parameters()
            keep_fp32 = name.split(".")[-1] in cls._keep_in_fp32_modules
            module.to(torch.float32 if keep_fp32 else wan.dtype)
        for block in model.blocks:
            block.zero_init_new_branches()

        wan_state = wan.state_dict()
        state = {}
        for name, target in model.state_dict().items():
            if target.is_meta:
                weight = wan_state[name]
                if name == "patch_embedding.weight" and weight.shape[1] != target.shape[1]:
                    weight = _zero_pad_input_channels(weight, target.shape[1])
                state[name] = weight.clone() if copy_weights else weight
        model.load_state_dict(state, strict=False, assign=True)

        dropped = sorted(set(wan_state) - set(state))
        if dropped:
            logger.info(f"from_wan: dropped {len(dropped)} Wan weights with no counterpart, e.g. {dropped[:3]}")
        on_meta = [name for name, param in model.named_parameters() if param.is_meta]
        if on_meta:
            raise RuntimeError(f"from_wan left weights on the meta device: {on_meta[:4]}")
        return model.eval()


def _zero_pad_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """(D, C, p_t, p_h, p_w) Wan patch-embedding weight -> (D, in_channels, ...) with zeros for the new channels."""
    if weight.shape[1] > in_channels:
        raise ValueError(
            f"The Wan model has {weight.shape[1]} input channels; in_channels={in_channels} cannot hold them."
        )
    padded = weight.new_zeros(weight.shape[0], in_channels, *weight.shape[2:])
    padded[:, : weight.shape[1]] = weight
    return padded
