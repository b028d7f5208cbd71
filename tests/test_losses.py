"""Training losses: flow matching with shifted timesteps, attention localization (the paper's L_loc), region weights."""

import pytest
import torch

from syncdreamer_hf import SyncDreamerTransformer3DModel, SyncDreamerVisualAdapter
from syncdreamer_hf.losses import (
    LAMBDA_LOC,
    add_flow_noise,
    attention_localization_loss,
    flow_matching_loss,
    flow_matching_target,
    region_weighted_flow_matching_loss,
    sample_flow_sigmas,
)
from syncdreamer_hf.regions import REGION_NAMES

REGIONS = REGION_NAMES


def token_masks(regions_of_tokens: dict[str, list[int]], grid=(1, 2, 2)) -> torch.Tensor:
    """(1, R, T, h, w) masks from {region: [flat token indices]}."""
    masks = torch.zeros(1, len(REGIONS), grid[0] * grid[1] * grid[2])
    for name, tokens in regions_of_tokens.items():
        masks[0, REGIONS.index(name), tokens] = 1
    return masks.view(1, len(REGIONS), *grid)


def test_lambda_loc_is_the_paper_value():
    assert LAMBDA_LOC == 0.4


def test_localization_loss_equals_the_formula_on_hand_built_maps():
    query_regions = ["mouth", "eyes", "global"]
    masks = token_masks({"mouth": [0, 1], "eyes": [1, 2]})  # N = 4 tokens
    attention = torch.tensor([[[0.2, 0.3, 0.5], [0.6, 0.1, 0.3], [0.7, 0.2, 0.1], [0.1, 0.4, 0.5]]])  # (1, N, K)
    # (1 - M_ij) A_ij over the K' = 2 masked queries: mouth query outside tokens {0,1}: 0.7 + 0.1;
    # eyes query outside tokens {1,2}: 0.3 + 0.4.
    expected = (0.7 + 0.1 + 0.3 + 0.4) / (4 * 2)
    loss = attention_localization_loss([attention], masks, REGIONS, query_regions)
    assert loss.item() == pytest.approx(expected)
    # several layers are averaged; a single tensor is accepted too
    assert attention_localization_loss([attention, attention], masks, REGIONS, query_regions).item() == pytest.approx(expected)
    assert attention_localization_loss(attention, masks, REGIONS, query_regions).item() == pytest.approx(expected)


def test_localization_loss_is_zero_when_attention_stays_inside_the_regions():
    query_regions = ["mouth", "eyes", "global"]
    masks = token_masks({"mouth": [0, 1], "eyes": [2, 3]})
    attention = torch.tensor([[[1.0, 0, 0], [0.5, 0, 0.5], [0, 1.0, 0], [0, 0, 1.0]]])
    assert attention_localization_loss([attention], masks, REGIONS, query_regions).item() == 0.0


def test_localization_loss_ignores_samples_without_masks():
    query_regions = ["mouth", "global"]
    masks = torch.cat([token_masks({"mouth": [0]}), token_masks({})])
    attention = torch.full((2, 4, 2), 0.5)
    with_masks = attention_localization_loss([attention[:1]], masks[:1], REGIONS, query_regions)
    weighted = attention_localization_loss([attention], masks, REGIONS, query_regions, torch.tensor([1.0, 0.0]))
    assert weighted.item() == pytest.approx(with_masks.item()) == pytest.approx(3 * 0.5 / 4)


def test_localization_loss_sends_gradients_to_the_visual_adapter():
    torch.manual_seed(0)
    adapter = SyncDreamerVisualAdapter(
        image_embed_dim=8, num_queries=6, hidden_dim=8, num_layers=1, num_attention_heads=2, identity_dim=8
    )
    transformer = SyncDreamerTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=36, text_dim=8, freq_dim=16, ffn_dim=16,
        num_layers=3, rope_max_seq_len=32, identity_dim=8, audio_dim=8,
    )
    identity_embeds = adapter(torch.randn(1, 5, 8)).identity_embeds
    output = transformer(
        torch.randn(1, 36, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 3, 8), identity_embeds=identity_embeds,
        return_identity_attention=True,
    )
    assert len(output.identity_attention) == len(transformer.localization_layers) == 1
    masks = torch.zeros(1, len(REGIONS), 2, 2, 2)
    masks[:, REGIONS.index("mouth"), :, 1] = 1
    masks[:, REGIONS.index("eyes"), :, 0] = 1
    loss = attention_localization_loss(output.identity_attention, masks, REGIONS, adapter.config.query_regions)
    loss.backward()
    assert loss.item() > 0
    grads = [p.grad for p in adapter.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum().item() for g in grads) > 0
    assert adapter.queries.grad.abs().sum() > 0


def test_region_weights_of_one_give_the_plain_loss():
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 16, 3, 4, 4, generator=generator), torch.randn(2, 16, 3, 4, 4, generator=generator)
    masks = (torch.rand(2, 5, 3, 2, 2, generator=generator) > 0.5).float()
    plain = flow_matching_loss(pred, target)
    ones = {name: 1.0 for name in REGIONS}
    assert region_weighted_flow_matching_loss(pred, target, masks, REGIONS, ones).item() == pytest.approx(plain.item())
    assert region_weighted_flow_matching_loss(pred, target, None, REGIONS, {"mouth": 20.0}).item() == pytest.approx(plain.item())


def test_mouth_weight_scales_exactly_the_mouth_tokens_share():
    generator = torch.Generator().manual_seed(1)
    pred, target = torch.randn(1, 16, 3, 4, 4, generator=generator), torch.randn(1, 16, 3, 4, 4, generator=generator)
    masks = torch.zeros(1, 5, 3, 2, 2)
    masks[0, REGIONS.index("mouth"), 1, 1, 0] = 1  # one token = latent frame 1, rows 2-3, columns 0-1
    squared_error = (pred - target) ** 2
    mouth_share = squared_error[:, :, 1, 2:4, 0:2].sum() / squared_error.numel()
    plain = flow_matching_loss(pred, target)
    weighted = region_weighted_flow_matching_loss(pred, target, masks, REGIONS, {"mouth": 20.0})
    assert (weighted - plain).item() == pytest.approx(19 * mouth_share.item(), rel=1e-5)
    assert mouth_share > 0


def test_mirrored_hands_weigh_the_mask_and_its_left_right_flip():
    generator = torch.Generator().manual_seed(2)
    pred, target = torch.randn(1, 16, 1, 4, 4, generator=generator), torch.randn(1, 16, 1, 4, 4, generator=generator)
    hands = token_masks({"hands": [1]})  # token (row 0, column 1): latent columns 2-3 of rows 0-1
    both_sides = token_masks({"hands": [0, 1]})
    weights = {"hands": 10.0, "mouth": 20.0}
    mirrored = region_weighted_flow_matching_loss(pred, target, hands, REGIONS, weights, mirrored_regions=["hands"])
    expected = region_weighted_flow_matching_loss(pred, target, both_sides, REGIONS, weights)
    assert mirrored.item() == pytest.approx(expected.item())
    unmirrored = region_weighted_flow_matching_loss(pred, target, hands, REGIONS, weights)
    squared_error = (pred - target) ** 2
    wrong_side_share = squared_error[:, :, 0, 0:2, 0:2].sum() / squared_error.numel()
    assert (mirrored - unmirrored).item() == pytest.approx(9 * wrong_side_share.item(), rel=1e-5)


def test_mirroring_leaves_the_regions_it_does_not_name_alone():
    generator = torch.Generator().manual_seed(3)
    pred, target = torch.randn(1, 16, 1, 4, 4, generator=generator), torch.randn(1, 16, 1, 4, 4, generator=generator)
    masks = token_masks({"mouth": [2]})
    weights = {"mouth": 20.0, "hands": 10.0}
    plain = region_weighted_flow_matching_loss(pred, target, masks, REGIONS, weights)
    assert region_weighted_flow_matching_loss(
        pred, target, masks, REGIONS, weights, mirrored_regions=["hands"]
    ).item() == pytest.approx(plain.item())


def test_shifted_sigmas_follow_wan_and_lean_to_high_noise():
    u = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    sigmas = sample_flow_sigmas(1000, shift=3.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sigmas, 3 * u / (1 + 2 * u))
    unshifted = sample_flow_sigmas(1000, shift=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(unshifted, u)
    assert 0 < sigmas.min() and sigmas.max() < 1 and sigmas.mean() > unshifted.mean() + 0.15


def test_flow_noise_interpolates_and_target_is_its_velocity():
    latents, noise = torch.randn(2, 16, 3, 4, 4), torch.randn(2, 16, 3, 4, 4)
    torch.testing.assert_close(add_flow_noise(latents, noise, torch.zeros(2)), latents)
    torch.testing.assert_close(add_flow_noise(latents, noise, torch.ones(2)), noise)
    sigmas = torch.tensor([0.25, 0.75])
    x_t = add_flow_noise(latents, noise, sigmas)
    torch.testing.assert_close(x_t, latents + sigmas.view(-1, 1, 1, 1, 1) * flow_matching_target(latents, noise))
