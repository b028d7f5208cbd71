"""SyncDreamer's audio dynamics encoder: Wav2Vec2 hidden states -> expressivity-weighted audio tokens.

Per video frame t it computes an expressivity weight w_t in [0, 1] from the frames t-k..t+k (k = 3) and
re-weights the frame features, A~_t = w_t A_t, so that beats, loudness peaks and emotional transitions drive
the face more than flat or silent stretches. The weighted frames are grouped per latent frame of the 3D VAE
(frame 0 alone, then `temporal_stride` frames each, plus a few context frames) and projected to the
transformer's audio tokens.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from ..model_cards import ModelCardMixin

@dataclass
class AudioDynamicsOutput(BaseOutput):
    """
    Args:
        audio_embeds (`(B, T, N_tok, audio_dim)`): audio tokens per latent frame, T = (F - 1) // temporal_stride + 1.
        expressivity (`(B, F)`): the per-frame expressivity weights w_t in [0, 1].
    """

    audio_embeds: torch.Tensor
    expressivity: torch.Tensor


class AudioDynamicsEncoder(ModelCardMixin, ModelMixin, ConfigMixin):
    r"""
    Args:
        audio_feature_dim (`int`, defaults to `768`): width of the Wav2Vec2 hidden states.
        num_audio_layers (`int`, defaults to `13`): hidden states stacked per sample (embeddings + 12 layers for
            wav2vec2-base); they are mixed with learned softmax weights.
        hidden_dim (`int`, defaults to `512`): width of the per-frame features A.
        window_radius (`int`, defaults to `3`): k, the expressivity weight of frame t sees frames t-k..t+k.
        context_frames (`int`, defaults to `2`): extra video frames on each side of a latent frame's frames.
        tokens_per_latent_frame (`int`, defaults to `32`): N_tok.
        audio_dim (`int`, defaults to `768`): width of the output audio tokens.
        use_expressivity (`bool`, defaults to `True`): `False` fixes w_t = 1 (the ablation without dynamics).
        temporal_stride (`int`, defaults to `4`): video frames per latent frame, the VAE's temporal compression
            (`vae.config.scale_factor_temporal`; 4 for Wan; latent frame 0 is video frame 0 alone).
    """

    _model_card_template = "audio_dynamics_encoder.md"

    @register_to_config
    def __init__(
        self,
        audio_feature_dim: int = 768,
        num_audio_layers: int = 13,
        hidden_dim: int = 512,
        window_radius: int = 3,
        context_frames: int = 2,
        tokens_per_latent_frame: int = 32,
        audio_dim: int = 768,
        use_expressivity: bool = True,
        temporal_stride: int = 4,
    ):
        super().__init__()
        self.layer_weights = nn.Parameter(torch.zeros(num_audio_layers))
        self.frame_proj = nn.Sequential(nn.Linear(audio_feature_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        # An MLP over the window t-k..t+k, written as convolutions over time.
        self.expressivity_net = (
            nn.Sequential(
                nn.Conv1d(hidden_dim, hidden_dim, kernel_size=2 * window_radius + 1),
                nn.GELU(),
                nn.Conv1d(hidden_dim, 1, kernel_size=1),
            )
            if use_expressivity
            else None
        )
        frames_per_token_group = temporal_stride + 2 * context_frames
        self.token_proj = nn.Sequential(
            nn.Linear(frames_per_token_group * hidden_dim, hidden_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden_dim, tokens_per_latent_frame * audio_dim),
        )

    def expressivity(self, frame_features: torch.Tensor) -> torch.Tensor:
        """`(B, F, hidden_dim)` frame features -> `(B, F)` weights in [0, 1]; the edges are replicate-padded."""
        if self.expressivity_net is None:
            return frame_features.new_ones(frame_features.shape[:2])
        k = self.config.window_radius
        padded = F.pad(frame_features.transpose(1, 2), (k, k), mode="replicate")  # (B, hidden_dim, F + 2k)
        return torch.sigmoid(self.expressivity_net(padded)).squeeze(1)

    def group_latent_frames(self, frame_features: torch.Tensor) -> torch.Tensor:
        """`(B, F, C)` -> `(B, T, (s + 2c) * C)`: latent frame j gets frames sj-s+1-c .. sj+c (clamped to the clip),
        s = `temporal_stride`."""
        c = self.config.context_frames
        stride = self.config.temporal_stride
        first, last = frame_features[:, :1], frame_features[:, -1:]
        padded = torch.cat(
            [first.expand(-1, stride - 1 + c, -1), frame_features, last.expand(-1, c, -1)], dim=1
        )  # (B, sT + 2c, C)
        windows = padded.unfold(1, stride + 2 * c, stride)  # (B, T, C, s + 2c)
        return windows.transpose(2, 3).flatten(2)

    def forward(self, audio_hidden_states: torch.Tensor, num_frames: int, return_dict: bool = True):
        """
        Args:
            audio_hidden_states (`(B, L, N_a, D)`): all Wav2Vec2 hidden states of the window's audio (50 Hz).
            num_frames (`int`): F, the number of video frames (sk + 1, s = `temporal_stride`) the audio spans.

        Returns:
            [`AudioDynamicsOutput`] with `audio_embeds (B, T, N_tok, audio_dim)` and `expressivity (B, F)`.
        """
        stride = self.config.temporal_stride
        if num_frames < 1 or (num_frames - 1) % stride:
            raise ValueError(f"num_frames must be {stride}k + 1 (1, {1 + stride}, {1 + 2 * stride}, ...), got {num_frames}.")
        layer_weights = self.layer_weights.softmax(dim=0).to(audio_hidden_states.dtype)
        features = torch.einsum("l,blnd->bnd", layer_weights, audio_hidden_states)  # (B, N_a, D)
        features = F.interpolate(features.transpose(1, 2), size=num_frames, mode="linear", align_corners=False)
        frame_features = self.frame_proj(features.transpose(1, 2))  # A: (B, F, hidden_dim)

        expressivity = self.expressivity(frame_features)  # w: (B, F)
        weighted = frame_features * expressivity.unsqueeze(-1)  # A~_t = w_t A_t

        tokens = self.token_proj(self.group_latent_frames(weighted))  # (B, T, N_tok * audio_dim)
        audio_embeds = tokens.unflatten(-1, (self.config.tokens_per_latent_frame, self.config.audio_dim))
        if not return_dict:
            return audio_embeds, expressivity
        return AudioDynamicsOutput(audio_embeds=audio_embeds, expressivity=expressivity)
