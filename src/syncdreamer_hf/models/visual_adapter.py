"""SyncDreamer's visual adapter: a Q-Former that distils image-encoder tokens into K identity tokens.

K learnable queries attend to each other and cross-attend to the hidden states of a transformers vision model
(CLIP / SigLIP `last_hidden_state`). Each query belongs to a region group (eyes, mouth, hair, jaw, hands, or
global); the attention localization loss keeps the video tokens that attend to a query inside that region.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from ..model_cards import ModelCardMixin
from ..regions import REGION_NAMES

REGION_GROUPS = (*REGION_NAMES, "global")


@dataclass
class SyncDreamerVisualAdapterOutput(BaseOutput):
    """
    Args:
        identity_embeds (`(B, K, identity_dim)`): the identity tokens, in the order of `config.query_regions`
            (with `raw_image_tokens`: `(B, N_img, identity_dim)`).
    """

    identity_embeds: torch.Tensor


def default_query_regions(num_queries: int) -> list[str]:
    """An equal share of the queries for each masked region; the remainder is `global` (no mask)."""
    share = num_queries // len(REGION_GROUPS)
    regions = [region for region in REGION_GROUPS[:-1] for _ in range(share)]
    return regions + ["global"] * (num_queries - len(regions))


class SyncDreamerVisualAdapter(ModelCardMixin, ModelMixin, ConfigMixin):
    r"""
    Q-Former-style identity encoder: `(B, N_img, image_embed_dim)` image tokens -> `(B, K, identity_dim)`.

    Args:
        image_embed_dim (`int`, defaults to `1024`): width of the image encoder's hidden states.
        num_queries (`int`, defaults to `32`): K, the number of identity tokens.
        hidden_dim (`int`, defaults to `768`): width of the queries inside the adapter.
        num_layers (`int`, defaults to `4`): layers of (query self-attention, cross-attention to the image, FFN).
        num_attention_heads (`int`, defaults to `12`): attention heads; `hidden_dim` must be divisible by it.
        identity_dim (`int`, defaults to `1024`): width of the output identity tokens.
        query_regions (`list[str]`, *optional*): the region group of each query, one of `REGION_GROUPS`;
            defaults to `default_query_regions(num_queries)`.
        raw_image_tokens (`bool`, defaults to `False`): the ablation without the adapter: no queries; the identity
            tokens are the image tokens, normalised and projected, `(B, N_img, identity_dim)`. They have no
            region (`query_regions` is empty), so the localization loss is zero.
    """

    _supports_gradient_checkpointing = False
    _model_card_template = "visual_adapter.md"

    @register_to_config
    def __init__(
        self,
        image_embed_dim: int = 1024,
        num_queries: int = 32,
        hidden_dim: int = 768,
        num_layers: int = 4,
        num_attention_heads: int = 12,
        identity_dim: int = 1024,
        query_regions: list[str] | None = None,
        raw_image_tokens: bool = False,
    ):
        super().__init__()
        self.norm_in = nn.LayerNorm(image_embed_dim)
        if raw_image_tokens:
            self.register_to_config(num_queries=0, query_regions=[])
            self.proj_out = nn.Linear(image_embed_dim, identity_dim)
            return
        if hidden_dim % num_attention_heads:
            raise ValueError(f"hidden_dim={hidden_dim} must be divisible by num_attention_heads={num_attention_heads}.")
        query_regions = list(query_regions) if query_regions is not None else default_query_regions(num_queries)
        unknown = sorted(set(query_regions) - set(REGION_GROUPS))
        if len(query_regions) != num_queries or unknown:
            raise ValueError(
                f"query_regions must name {num_queries} regions from {REGION_GROUPS}; got {len(query_regions)} "
                f"entries, unknown: {unknown}."
            )
        self.register_to_config(query_regions=query_regions)

        self.queries = nn.Parameter(torch.randn(1, num_queries, hidden_dim) * hidden_dim**-0.5)
        self.layers = nn.ModuleList(
            [
                BasicTransformerBlock(
                    hidden_dim,
                    num_attention_heads,
                    hidden_dim // num_attention_heads,
                    cross_attention_dim=image_embed_dim,
                    activation_fn="gelu",
                    attention_bias=True,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm_out = nn.LayerNorm(hidden_dim)
        self.proj_out = nn.Linear(hidden_dim, identity_dim)

    def region_index(self, region: str) -> torch.Tensor:
        """Indices of the queries of one region group, e.g. `adapter.region_index("mouth")`."""
        return torch.tensor([i for i, name in enumerate(self.config.query_regions) if name == region], dtype=torch.long)

    def forward(
        self, image_embeds: torch.Tensor, return_dict: bool = True
    ) -> SyncDreamerVisualAdapterOutput | tuple[torch.Tensor]:
        """
        Args:
            image_embeds (`(B, N_img, image_embed_dim)`): image-encoder hidden states of the reference image.
            return_dict (`bool`, defaults to `True`): return a [`SyncDreamerVisualAdapterOutput`] instead of a
                tuple `(identity_embeds,)`.

        Returns:
            [`SyncDreamerVisualAdapterOutput`] with `identity_embeds (B, K, identity_dim)`.
        """
        image_embeds = self.norm_in(image_embeds)
        if self.config.raw_image_tokens:
            identity_embeds = self.proj_out(image_embeds)  # (B, N_img, identity_dim)
        else:
            queries = self.queries.expand(image_embeds.shape[0], -1, -1).to(image_embeds.dtype)  # (B, K, hidden_dim)
            for layer in self.layers:
                queries = layer(queries, encoder_hidden_states=image_embeds)
            identity_embeds = self.proj_out(self.norm_out(queries))  # (B, K, identity_dim)
        if not return_dict:
            return (identity_embeds,)
        return SyncDreamerVisualAdapterOutput(identity_embeds=identity_embeds)
