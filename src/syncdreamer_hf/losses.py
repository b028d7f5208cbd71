"""Training losses: flow matching with shifted timesteps (as Wan), attention localization, region weighting.

- `sample_flow_sigmas` / `add_flow_noise` / `flow_matching_loss`: rectified flow as Wan2.1,
  x_t = (1 - s) x_0 + s eps, velocity target eps - x_0, sigmas drawn uniformly then shifted
  s = shift * u / (1 + (shift - 1) * u) (the same shift as the `flow_shift` of the inference scheduler).
- `attention_localization_loss`: the paper's localization loss, L_loc = 1/(N K) sum_ij (1 - M_ij) A_ij over the identity
  queries that have a region (the `global` queries have no mask and are left out).
- `region_weighted_flow_matching_loss`: the flow-matching MSE with per-region weights (e.g. mouth x20) from
  the region masks at the latent-token grid.

Region masks everywhere are `(B, R, T, h_tok, w_tok)` at the transformer's token grid (latent frames x
latent height / patch x latent width / patch), in the order of `region_names`, 1 inside the region.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

LAMBDA_LOC = 0.4


def sample_flow_sigmas(
    batch_size: int, shift: float = 3.0, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Noise levels s in (0, 1) for a batch: u ~ U(0, 1), then Wan's shift s = shift u / (1 + (shift - 1) u).

    A shift > 1 moves the samples towards high noise, where large-scale structure and motion are decided.
    The transformer's timestep is `1000 * s`.
    """
    u = torch.rand(batch_size, generator=generator)  # drawn on the generator's (CPU) device: reproducible
    return (shift * u / (1 + (shift - 1) * u)).to(device)


def add_flow_noise(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - s) x_0 + s eps with sigmas `(B,)` broadcast over `(B, C, T, h, w)`."""
    sigmas = sigmas.view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype)
    return (1 - sigmas) * latents + sigmas * noise


def flow_matching_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the transformer predicts: eps - x_0."""
    return noise - latents


def flow_matching_loss(model_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and target velocity, in float32."""
    return F.mse_loss(model_pred.float(), target.float())


def region_weight_map(
    region_masks: torch.Tensor,
    region_names: Sequence[str],
    region_weights: dict[str, float],
    latent_shape: Sequence[int],
    mirrored_regions: Sequence[str] = (),
) -> torch.Tensor:
    """Per-position loss weights at the latent grid from token-grid region masks.

    Args:
        region_masks (`(B, R, T, h_tok, w_tok)`): 1 inside region r.
        region_names: the R region names, in the order of `region_masks`.
        region_weights: weight per region name, e.g. `{"mouth": 20.0}`; regions not named weigh 1.
        latent_shape: `(B, C, T, h, w)` of the latents; h, w are multiples of h_tok, w_tok (the patch size).
        mirrored_regions: regions whose weight also covers the left-right mirror of their mask, so that drawing
            the region on the wrong side of the frame costs as much as missing it on the right one.

    Returns:
        `(B, 1, T, h, w)` weights: the largest weight among the regions covering a position, 1 elsewhere.
    """
    weights = torch.ones(region_masks.shape[0], *region_masks.shape[2:], device=region_masks.device)
    for index, name in enumerate(region_names):
        weight = float(region_weights.get(name, 1.0))
        if weight != 1.0:
            inside = region_masks[:, index] > 0
            if name in mirrored_regions:
                inside = inside | inside.flip(-1)
            weights = torch.where(inside, torch.maximum(weights, torch.full_like(weights, weight)), weights)
    _, _, num_frames, height, width = latent_shape
    if weights.shape[1] != num_frames or height % weights.shape[2] or width % weights.shape[3]:
        raise ValueError(
            f"region masks at the token grid {tuple(region_masks.shape[2:])} do not tile latents {tuple(latent_shape)}."
        )
    patch_h, patch_w = height // weights.shape[2], width // weights.shape[3]
    weights = weights.repeat_interleave(patch_h, dim=2).repeat_interleave(patch_w, dim=3)
    return weights.unsqueeze(1)


def region_weighted_flow_matching_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    region_masks: torch.Tensor | None,
    region_names: Sequence[str],
    region_weights: dict[str, float] | None,
    mirrored_regions: Sequence[str] = (),
) -> torch.Tensor:
    """Flow-matching MSE where the squared error of each latent position is multiplied by its region's weight.

    The weights are not renormalised: with a mouth weight w the loss is
    (sum of the errors outside the mouth + w * sum of the errors inside) / number of elements, so the mouth
    tokens' share grows exactly w times, and with every weight 1 (or no masks) it is `flow_matching_loss`.

    Args:
        model_pred, target (`(B, C, T, h, w)`): predicted and target velocity.
        region_masks (`(B, R, T, h_tok, w_tok)`, *optional*): token-grid masks; `None` gives the plain loss.
        region_names: names of the R masks.
        region_weights: e.g. `{"mouth": 20.0}`.
        mirrored_regions: see `region_weight_map`.
    """
    if region_masks is None or not region_weights:
        return flow_matching_loss(model_pred, target)
    weights = region_weight_map(region_masks, region_names, region_weights, model_pred.shape, mirrored_regions)
    squared_error = (model_pred.float() - target.float()) ** 2
    return (squared_error * weights).mean()


def query_region_masks(
    region_masks: torch.Tensor, region_names: Sequence[str], query_regions: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-grid region masks -> the per-query mask M of the localization loss.

    Args:
        region_masks (`(B, R, T, h_tok, w_tok)`): 1 inside region r.
        region_names: names of the R masks.
        query_regions: the region group of each of the K identity queries (`visual_adapter.config.query_regions`).

    Returns:
        `M (B, N, K')` with M_ij = 1 when video token i (frame-major, N = T * h_tok * w_tok) lies in the region of
        query j, for the K' queries with a masked region, and the indices `(K',)` of those queries.
    """
    position = {name: index for index, name in enumerate(region_names)}
    missing = sorted({r for r in query_regions if r != "global"} - set(position))
    if missing:
        raise ValueError(f"the visual adapter has queries for regions {missing} but the masks only hold {list(region_names)}.")
    query_index = [j for j, region in enumerate(query_regions) if region != "global"]
    mask_index = [position[query_regions[j]] for j in query_index]
    flat_masks = region_masks.flatten(2).float()  # (B, R, N)
    masks = flat_masks[:, mask_index].transpose(1, 2)  # (B, N, K')
    return masks, torch.tensor(query_index, dtype=torch.long, device=region_masks.device)


def attention_localization_loss(
    identity_attention: Sequence[torch.Tensor] | torch.Tensor,
    region_masks: torch.Tensor,
    region_names: Sequence[str],
    query_regions: Sequence[str],
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_loc = 1/(N K) sum_ij (1 - M_ij) A_ij (the paper's localization loss), averaged over layers and samples.

    Attention that a video token outside a query's region pays to that query is penalised; the `global` queries
    (no region) are left out of the sum and of K.

    Args:
        identity_attention: one `(B, N, K)` tensor per localization layer (the transformer's
            `identity_attention` output, softmax over K, mean over heads), or a single `(B, N, K)` tensor.
        region_masks (`(B, R, T, h_tok, w_tok)`): token-grid masks, N = T * h_tok * w_tok.
        region_names: names of the R masks.
        query_regions: the region group of each of the K queries.
        sample_weights (`(B,)`, *optional*): 0 for samples without masks; the loss averages over the others.
    """
    if isinstance(identity_attention, torch.Tensor):
        identity_attention = (identity_attention,)
    if not identity_attention:
        raise ValueError("no identity attention maps: call the transformer with return_identity_attention=True.")
    masks, query_index = query_region_masks(region_masks, region_names, query_regions)
    if query_index.numel() == 0:
        return identity_attention[0].new_zeros(())
    per_layer = []
    for probs in identity_attention:
        if probs.shape[1] != masks.shape[1]:
            raise ValueError(f"attention has {probs.shape[1]} video tokens, the masks {masks.shape[1]}.")
        outside = (1 - masks) * probs.float()[:, :, query_index]  # (B, N, K')
        per_layer.append(outside.mean(dim=(1, 2)))  # 1/(N K') sum_ij, per sample
    per_sample = torch.stack(per_layer).mean(dim=0)  # (B,)
    if sample_weights is None:
        return per_sample.mean()
    sample_weights = sample_weights.to(per_sample)
    return (per_sample * sample_weights).sum() / sample_weights.sum().clamp(min=1)
