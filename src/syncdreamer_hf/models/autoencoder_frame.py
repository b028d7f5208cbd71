"""A per-frame convolutional autoencoder with the interface of diffusers' `AutoencoderKLWan`, for tiny CPU models.

A causal 3D Wan VAE small enough for a CPU is slow to train (every convolution is 3x3x3, decoding walks the frames
with a cache) and, with 4x temporal compression, has to squeeze four mouth shapes into one latent frame. This
autoencoder compresses space only: each frame is encoded and decoded on its own by a few strided 2D convolutions,
so it trains in minutes on CPU. `SyncDreamerPipeline` uses it like the Wan VAE: `encode(video).latent_dist`,
`decode(latents).sample` on `(B, C, F, H, W)` videos, and the config keys `z_dim`, `scale_factor_spatial`,
`scale_factor_temporal` (always 1: one latent frame per video frame), `latents_mean` and `latents_std`.
"""

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin

from ..model_cards import ModelCardMixin


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class SyncDreamerFrameAutoencoder(ModelCardMixin, ModelMixin, ConfigMixin):
    r"""
    Args:
        in_channels (`int`, defaults to `3`): channels of the video.
        z_dim (`int`, defaults to `16`): latent channels (the transformer's `out_channels`, as with Wan's VAE).
        block_out_channels (`tuple[int]`, defaults to `(32, 64, 64)`): width per resolution; each level after the
            first halves height and width, so the spatial compression is `2 ** (len(block_out_channels) - 1)`.
        scale_factor_spatial (`int`, defaults to `4`): must equal that compression (the pipeline reads it).
        scale_factor_temporal (`int`, defaults to `1`): must be 1 (frames are encoded one by one).
        latents_mean, latents_std (`list[float]`, *optional*): per-channel statistics of the latents, which the
            pipeline normalises with (zeros / ones when not given).
    """

    _supports_gradient_checkpointing = False
    _model_card_template = "frame_autoencoder.md"

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        z_dim: int = 16,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        scale_factor_spatial: int = 4,
        scale_factor_temporal: int = 1,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
    ):
        super().__init__()
        if scale_factor_spatial != 2 ** (len(block_out_channels) - 1) or scale_factor_temporal != 1:
            raise ValueError(
                f"scale_factor_spatial must be 2 ** (len(block_out_channels) - 1) = "
                f"{2 ** (len(block_out_channels) - 1)} and scale_factor_temporal 1; got {scale_factor_spatial} and "
                f"{scale_factor_temporal}."
            )
        self.register_to_config(
            latents_mean=list(latents_mean) if latents_mean is not None else [0.0] * z_dim,
            latents_std=list(latents_std) if latents_std is not None else [1.0] * z_dim,
        )
        widths = list(block_out_channels)
        encoder = [nn.Conv2d(in_channels, widths[0], 3, padding=1), ResidualBlock(widths[0])]
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            encoder += [nn.SiLU(), nn.Conv2d(width_in, width_out, 4, stride=2, padding=1), ResidualBlock(width_out)]
        encoder += [nn.SiLU(), nn.Conv2d(widths[-1], 2 * z_dim, 3, padding=1)]  # mean and log-variance
        self.encoder = nn.Sequential(*encoder)

        decoder = [nn.Conv2d(z_dim, widths[-1], 3, padding=1), ResidualBlock(widths[-1])]
        for width_in, width_out in zip(widths[:0:-1], widths[-2::-1]):
            decoder += [nn.SiLU(), nn.ConvTranspose2d(width_in, width_out, 4, stride=2, padding=1), ResidualBlock(width_out)]
        decoder += [nn.SiLU(), nn.Conv2d(widths[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*decoder)

    @staticmethod
    def _per_frame(video: torch.Tensor, module: nn.Module) -> torch.Tensor:
        """Applies a 2D `module` to every frame: `(B, C, F, H, W)` -> `(B, C', F, H', W')`."""
        batch_size, _, num_frames = video.shape[:3]
        frames = video.transpose(1, 2).flatten(0, 1)  # (B F, C, H, W)
        out = module(frames)
        return out.unflatten(0, (batch_size, num_frames)).transpose(1, 2)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """`(B, C, F, H, W)` in [-1, 1] -> posterior over `(B, z_dim, F, H / s, W / s)` latents (not normalised)."""
        posterior = DiagonalGaussianDistribution(self._per_frame(x, self.encoder))
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """`(B, z_dim, F, h, w)` latents -> `(B, C, F, h s, w s)` frames, about [-1, 1] (not clamped)."""
        video = self._per_frame(z, self.decoder)
        if not return_dict:
            return (video,)
        return DecoderOutput(sample=video)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, generator=None, return_dict: bool = True):
        posterior = self.encode(sample).latent_dist
        latents = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(latents, return_dict=return_dict)
