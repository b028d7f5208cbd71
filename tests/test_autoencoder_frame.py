"""SyncDreamerFrameAutoencoder: the Wan VAE's interface, frame by frame, and its save/load round trip."""

import pytest
import torch

from syncdreamer_hf import SyncDreamerFrameAutoencoder
from syncdreamer_hf.tiny import load_vae


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return SyncDreamerFrameAutoencoder(z_dim=8, block_out_channels=(8, 8, 16)).eval()


@torch.no_grad()
def test_shapes_follow_the_scale_factors(vae):
    video = torch.rand(2, 3, 7, 32, 48) * 2 - 1
    posterior = vae.encode(video).latent_dist
    assert posterior.mode().shape == (2, 8, 7, 8, 12)  # T = F, H / 4, W / 4
    assert vae.decode(posterior.mode()).sample.shape == video.shape
    assert (vae.config.scale_factor_spatial, vae.config.scale_factor_temporal) == (4, 1)
    assert vae.config.latents_mean == [0.0] * 8 and vae.config.latents_std == [1.0] * 8


@torch.no_grad()
def test_frames_are_encoded_and_decoded_independently(vae):
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    latents = vae.encode(video).latent_dist.mode()
    changed = video.clone()
    changed[:, :, 3] = 0
    moved = (vae.encode(changed).latent_dist.mode() - latents).abs().amax(dim=(0, 1, 3, 4))
    assert moved[3] > 0 and moved[[0, 1, 2, 4]].max() == 0
    torch.testing.assert_close(vae.decode(latents[:, :, 2:3]).sample, vae.decode(latents).sample[:, :, 2:3])


def test_config_must_match_the_compression():
    with pytest.raises(ValueError, match="scale_factor_spatial"):
        SyncDreamerFrameAutoencoder(block_out_channels=(8, 8), scale_factor_spatial=4)
    with pytest.raises(ValueError, match="scale_factor_temporal"):
        SyncDreamerFrameAutoencoder(scale_factor_temporal=4)


@torch.no_grad()
def test_save_load_round_trip_and_load_vae(vae, tmp_path):
    vae.register_to_config(latents_mean=[0.5] * 8, latents_std=[2.0] * 8)
    vae.save_pretrained(tmp_path)
    loaded = load_vae(tmp_path)
    assert type(loaded) is SyncDreamerFrameAutoencoder and loaded.config.latents_std == [2.0] * 8
    video = torch.rand(1, 3, 2, 16, 16)
    torch.testing.assert_close(loaded(video).sample, vae(video).sample)
