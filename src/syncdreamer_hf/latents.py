"""The latent normalisation of every VAE the pipeline takes (`AutoencoderKLWan`, `SyncDreamerFrameAutoencoder`): per
channel, `(z - latents_mean) / latents_std` with the statistics of the VAE's config. The pipeline (and with it the
latent cache of `syncdreamer preprocess`) and the VAE evaluation go through these two functions."""

import torch


def _statistics(vae_config, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(mean, std)`, each `(1, C, 1, 1, 1)` on the device and in the dtype of `latents`."""
    mean = torch.tensor(vae_config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
    std = torch.tensor(vae_config.latents_std).view(1, -1, 1, 1, 1).to(latents)
    return mean, std


def normalize_latents(latents: torch.Tensor, vae_config) -> torch.Tensor:
    """VAE latents `(B, C, T, h, w)` -> the normalised latents the transformer sees."""
    mean, std = _statistics(vae_config, latents)
    return (latents - mean) / std


def denormalize_latents(latents: torch.Tensor, vae_config) -> torch.Tensor:
    """Normalised latents `(B, C, T, h, w)` -> VAE latents for `vae.decode`."""
    mean, std = _statistics(vae_config, latents)
    return latents * std + mean
