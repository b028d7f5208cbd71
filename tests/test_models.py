"""Core models: the Wan-compatible transformer, the visual adapter and the audio dynamics encoder."""

import json

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.hooks import FirstBlockCacheConfig
from peft import LoraConfig

from syncdreamer_hf import AudioDynamicsEncoder, SyncDreamerTransformer3DModel, SyncDreamerVisualAdapter
from syncdreamer_hf.losses import attention_localization_loss

WAN_TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
    text_dim=16, freq_dim=32, ffn_dim=32, num_layers=3, rope_max_seq_len=32,
)
IDENTITY_DIM, AUDIO_DIM, K, N_TOK = 8, 10, 6, 4
B, T, H, W = 2, 3, 8, 8  # latent shape; 3 latent frames = 9 video frames


def make_wan(seed=0, **overrides):
    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**WAN_TINY, **overrides}).eval()


def make_inputs(seed=1, in_channels=36):
    generator = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(B, in_channels, T, H, W, generator=generator),
        timestep=torch.tensor([120.0, 870.0]),
        encoder_hidden_states=torch.randn(B, 5, 16, generator=generator),
        identity_embeds=torch.randn(B, K, IDENTITY_DIM, generator=generator),
        audio_embeds=torch.randn(B, T, N_TOK, AUDIO_DIM, generator=generator),
    )


def randomize_new_branches(model, seed=3):
    """Give the zero-initialised output projections values, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.blocks:
            for attn in (block.attn_identity, block.attn_audio):
                attn.to_out[0].weight.copy_(torch.randn(attn.to_out[0].weight.shape, generator=generator) * 0.2)
    return model


def public_config(module):
    return json.loads(json.dumps({k: v for k, v in module.config.items() if not k.startswith("_")}))


@pytest.fixture(scope="module")
def wan():
    return make_wan()


@pytest.fixture()
def model(wan):
    return SyncDreamerTransformer3DModel.from_wan(wan, identity_dim=IDENTITY_DIM, audio_dim=AUDIO_DIM)


@pytest.mark.parametrize("with_conditions", [False, True])
@torch.no_grad()
def test_zero_init_branches_reproduce_wan(wan, model, with_conditions):
    inputs = make_inputs()
    reference = wan(inputs["hidden_states"][:, :16], inputs["timestep"], inputs["encoder_hidden_states"]).sample
    for extra_scale in (0.0, 1.0, 100.0):  # any values in the 20 extra channels
        inputs["hidden_states"][:, 16:] = torch.randn(B, 20, T, H, W) * extra_scale
        if not with_conditions:
            inputs.pop("identity_embeds", None), inputs.pop("audio_embeds", None)
        output = model(**inputs).sample
        assert output.shape == reference.shape
        assert (output - reference).abs().max().item() <= 1e-5


def test_from_wan_copies_i2v_weights_and_leaves_nothing_on_meta():
    wan_i2v = make_wan(seed=5, in_channels=36, image_dim=20, added_kv_proj_dim=24)
    model = SyncDreamerTransformer3DModel.from_wan(wan_i2v, identity_dim=IDENTITY_DIM, audio_dim=AUDIO_DIM)
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    assert torch.equal(model.patch_embedding.weight, wan_i2v.patch_embedding.weight)
    assert torch.equal(model.blocks[2].attn1.to_q.weight, wan_i2v.blocks[2].attn1.to_q.weight)
    # the copy is independent of the source model
    assert model.blocks[0].ffn.net[0].proj.weight.data_ptr() != wan_i2v.blocks[0].ffn.net[0].proj.weight.data_ptr()
    assert not hasattr(model.blocks[0].attn2, "add_k_proj") or model.blocks[0].attn2.add_k_proj is None
    for block in model.blocks:
        assert block.attn_identity.to_out[0].weight.abs().sum() == 0
        assert block.attn_audio.to_out[0].weight.abs().sum() == 0
        assert block.attn_identity.to_q.weight.abs().sum() > 0  # new projections are initialised, not zero


def test_from_wan_loads_a_saved_wan_by_path(tmp_path, wan):
    wan.save_pretrained(tmp_path / "transformer")
    model = SyncDreamerTransformer3DModel.from_wan(str(tmp_path), subfolder="transformer", audio_dim=AUDIO_DIM)
    assert model.config.audio_dim == AUDIO_DIM and model.config.in_channels == 36
    assert torch.equal(model.proj_out.weight, wan.proj_out.weight)
    assert model.patch_embedding.weight[:, 16:].abs().sum() == 0


def test_from_wan_refuses_to_drop_input_channels():
    with pytest.raises(ValueError, match="input channels"):
        SyncDreamerTransformer3DModel.from_wan(make_wan(in_channels=36), in_channels=16)


@torch.no_grad()
def test_audio_attention_is_frame_local(model):
    randomize_new_branches(model)
    captured = []
    hook = model.blocks[0].attn_audio.register_forward_hook(lambda module, args, output: captured.append(output))
    inputs = make_inputs()
    model(**inputs)
    changed = dict(inputs, audio_embeds=inputs["audio_embeds"].clone())
    changed["audio_embeds"][:, 1] += 3.0  # latent frame j = 1 only
    model(**changed)
    hook.remove()
    before, after = (out.unflatten(0, (B, T)) for out in captured)  # (B, T, h*w, D)
    difference = (before - after).abs().amax(dim=(0, 2, 3))
    assert difference[1] > 1e-3
    assert difference[0] == 0 and difference[2] == 0


@torch.no_grad()
def test_none_drops_a_branch(model):
    randomize_new_branches(model)
    inputs = make_inputs()
    full = model(**inputs).sample
    no_audio = model(**dict(inputs, audio_embeds=None)).sample
    no_identity = model(**dict(inputs, identity_embeds=None)).sample
    assert (full - no_audio).abs().max() > 1e-4 and (full - no_identity).abs().max() > 1e-4


@torch.no_grad()
def test_identity_attention_probabilities_of_localization_layers(model):
    randomize_new_branches(model)
    inputs = make_inputs()
    plain = model(**inputs)
    assert plain.identity_attention is None
    out = model(**inputs, return_identity_attention=True)
    assert torch.allclose(out.sample, plain.sample, atol=1e-5)  # explicit softmax path == dispatch path
    assert len(out.identity_attention) == len(model.localization_layers) == 1
    probs = out.identity_attention[0]
    assert probs.shape == (B, T * (H // 2) * (W // 2), K)
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5) and probs.min() >= 0
    with pytest.raises(ValueError, match="identity_embeds"):
        model(**dict(inputs, identity_embeds=None), return_identity_attention=True)


def test_gradients_reach_every_new_parameter(model):
    # At init only the zero output projections get gradient; once they are non-zero everything new does.
    randomize_new_branches(model)
    model.train()
    model(**make_inputs()).sample.square().mean().backward()
    new_params = model.new_branch_parameters()
    assert len(new_params) > 0
    for param in new_params:
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_the_model_names_its_new_and_audio_branches_and_wan_owns_the_rest(model, wan):
    new, audio = {id(p) for p in model.new_branch_parameters()}, {id(p) for p in model.audio_branch_parameters()}
    new_names = {name for name, p in model.named_parameters() if id(p) in new}
    wan_names = {name for name, _ in wan.named_parameters()}
    # every parameter is either Wan's or new
    assert new_names and not new_names & wan_names
    assert {name for name, _ in model.named_parameters()} - new_names == wan_names
    assert audio < new
    assert all(("audio" in name) == (id(p) in audio) for name, p in model.named_parameters() if name in new_names)


def test_new_branch_state_dict_round_trips_and_rejects_another_model(model, wan):
    randomize_new_branches(model)
    state = model.new_branch_state_dict()
    assert state and all(not tensor.requires_grad for tensor in state.values())
    fresh = SyncDreamerTransformer3DModel.from_wan(wan, identity_dim=IDENTITY_DIM, audio_dim=AUDIO_DIM)
    fresh.load_new_branch_state_dict(state)
    inputs = make_inputs()
    torch.testing.assert_close(fresh(**inputs).sample, model(**inputs).sample, rtol=0, atol=0)
    with pytest.raises(ValueError, match="do not fit"):
        fresh.load_new_branch_state_dict({**state, "blocks.99.attn_audio.to_q.weight": torch.zeros(1)})
    # LoRA layers from peft never enter the new branches
    fresh.add_adapter(LoraConfig(r=2, target_modules=fresh.lora_target_modules))
    assert fresh.new_branch_state_dict().keys() == state.keys()

def test_identity_attention_loss_reaches_identity_embeds(model):
    randomize_new_branches(model)
    inputs = make_inputs()
    inputs["identity_embeds"].requires_grad_(True)
    out = model(**inputs, return_identity_attention=True)
    out.identity_attention[0][..., :2].sum().backward()
    assert inputs["identity_embeds"].grad.abs().sum() > 0


def test_gradient_checkpointing_gives_same_gradients(wan):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the new branches' input projections are randomly initialised
        model = SyncDreamerTransformer3DModel.from_wan(wan, identity_dim=IDENTITY_DIM, audio_dim=AUDIO_DIM)
        randomize_new_branches(model).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        out = model(**make_inputs(), return_identity_attention=True)
        (out.sample.square().mean() + out.identity_attention[0].mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_save_load_round_trip_of_all_three_models(tmp_path, model):
    randomize_new_branches(model)
    adapter = SyncDreamerVisualAdapter(image_embed_dim=24, num_queries=K, hidden_dim=16, num_layers=2,
                                       num_attention_heads=2, identity_dim=IDENTITY_DIM)
    encoder = AudioDynamicsEncoder(audio_feature_dim=12, num_audio_layers=3, hidden_dim=16,
                                   tokens_per_latent_frame=N_TOK, audio_dim=AUDIO_DIM)
    image_tokens, audio_states, inputs = torch.randn(B, 10, 24), torch.randn(B, 3, 30, 12), make_inputs()
    outputs = {
        SyncDreamerTransformer3DModel: lambda m: m(**inputs).sample,
        SyncDreamerVisualAdapter: lambda m: m(image_tokens).identity_embeds,
        AudioDynamicsEncoder: lambda m: m(audio_states, 9).audio_embeds,
    }
    for module in (model, adapter, encoder):
        cls = type(module)
        module.eval().save_pretrained(tmp_path / cls.__name__)
        loaded = cls.from_pretrained(tmp_path / cls.__name__).eval()
        assert public_config(loaded) == public_config(module)
        assert torch.equal(outputs[cls](module), outputs[cls](loaded)), cls.__name__


@torch.no_grad()
def test_peft_lora_add_and_disable(model):
    inputs = make_inputs()
    base = model(**inputs).sample
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.normal_(std=0.1)
    with_lora = model(**inputs).sample
    assert (with_lora - base).abs().max() > 1e-4
    model.disable_adapters()
    torch.testing.assert_close(model(**inputs).sample, base)
    model.enable_adapters()
    torch.testing.assert_close(model(**inputs).sample, with_lora)


@torch.no_grad()
def test_attention_backends_native_and_math_agree(model):
    randomize_new_branches(model)
    inputs = make_inputs()
    model.set_attention_backend("native")
    native = model(**inputs).sample
    model.set_attention_backend("_native_math")
    try:
        math = model(**inputs).sample
        assert all(block.attn_identity.processor._attention_backend == "_native_math" for block in model.blocks)
    finally:
        model.set_attention_backend("native")  # diffusers keeps the active backend globally: restore the default
    torch.testing.assert_close(native, math, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_first_block_cache_hooks_our_blocks(model):
    randomize_new_branches(model)
    inputs = make_inputs()
    exact = [model(**dict(inputs, timestep=t)).sample for t in (torch.tensor([500.0] * B), torch.tensor([490.0] * B))]
    model.enable_cache(FirstBlockCacheConfig(threshold=1e9))  # always reuse after the first step
    assert model.is_cache_enabled
    with model.cache_context("cond"):  # as a pipeline's denoising loop does
        first = model(**dict(inputs, timestep=torch.tensor([500.0] * B))).sample
        second = model(**dict(inputs, timestep=torch.tensor([490.0] * B))).sample
    model.disable_cache()
    torch.testing.assert_close(first, exact[0])
    assert (second - exact[1]).abs().max() > 1e-6  # the tail blocks were skipped: cached residual reused
    torch.testing.assert_close(second, exact[1], atol=0.5, rtol=0.5)


def test_audio_embeds_must_match_latent_frames(model):
    inputs = make_inputs()
    inputs["audio_embeds"] = inputs["audio_embeds"][:, :2]
    with pytest.raises(ValueError, match="latent frames"):
        model(**inputs)


def test_visual_adapter_shapes_and_regions():
    adapter = SyncDreamerVisualAdapter(image_embed_dim=24, num_queries=32, hidden_dim=16, num_layers=1,
                                       num_attention_heads=2, identity_dim=8)
    assert adapter(torch.randn(3, 7, 24)).identity_embeds.shape == (3, 32, 8)
    regions = adapter.config.query_regions
    assert len(regions) == 32 and regions.count("mouth") == 5 and regions.count("global") == 7
    assert adapter.region_index("mouth").tolist() == [i for i, r in enumerate(regions) if r == "mouth"]
    with pytest.raises(ValueError, match="query_regions"):
        SyncDreamerVisualAdapter(num_queries=2, query_regions=["mouth", "nose"])


def make_audio_encoder(**overrides):
    torch.manual_seed(0)
    config = dict(audio_feature_dim=12, num_audio_layers=3, hidden_dim=16, tokens_per_latent_frame=N_TOK,
                  audio_dim=AUDIO_DIM)
    return AudioDynamicsEncoder(**{**config, **overrides}).eval()


@torch.no_grad()
def test_expressivity_window_sees_t_plus_3_not_t_plus_4():
    encoder = make_audio_encoder()
    frames, t = 21, 8
    states = torch.randn(1, 3, frames, 12)  # one wav2vec2 step per video frame: interpolation is the identity
    base = encoder(states, frames).expressivity
    assert base.shape == (1, frames) and base.min() >= 0 and base.max() <= 1
    for offset, should_change in ((3, True), (-3, True), (4, False), (-4, False)):
        changed = states.clone()
        changed[:, :, t + offset] += 5.0
        moved = (encoder(changed, frames).expressivity[0, t] - base[0, t]).abs().item()
        assert (moved > 1e-6) == should_change, (offset, moved)


@torch.no_grad()
def test_audio_tokens_follow_latent_frame_grouping():
    encoder = make_audio_encoder(context_frames=0, use_expressivity=False)
    frames = 13  # T = 4 latent frames: [0], [1..4], [5..8], [9..12]
    states = torch.randn(1, 3, frames, 12)
    base = encoder(states, frames)
    assert base.audio_embeds.shape == (1, 4, N_TOK, AUDIO_DIM)
    assert torch.equal(base.expressivity, torch.ones(1, frames))
    changed = states.clone()
    changed[:, :, 6] += 5.0  # video frame 6 belongs to latent frame 2
    moved = (encoder(changed, frames).audio_embeds - base.audio_embeds).abs().amax(dim=(0, 2, 3))
    assert moved[2] > 1e-5 and moved[0] == 0 and moved[1] == 0 and moved[3] == 0


@torch.no_grad()
def test_expressivity_reweights_frame_features():
    encoder = make_audio_encoder(context_frames=0)
    states = torch.randn(1, 3, 9, 12)
    out = encoder(states, 9)
    flat = make_audio_encoder(context_frames=0, use_expressivity=False)
    flat.load_state_dict({k: v for k, v in encoder.state_dict().items() if not k.startswith("expressivity_net")})
    # with every w_t = 1 the tokens differ: the weights really scale the features
    assert (flat(states, 9).audio_embeds - out.audio_embeds).abs().max() > 1e-4


def test_audio_encoder_rejects_frame_counts_that_are_not_4k_plus_1():
    with pytest.raises(ValueError, match="4k \\+ 1"):
        make_audio_encoder()(torch.randn(1, 3, 20, 12), 10)


@torch.no_grad()
def test_temporal_stride_1_gives_one_token_group_per_video_frame():
    encoder = make_audio_encoder(context_frames=1, use_expressivity=False, temporal_stride=1)
    frames = 6  # any count: T = F
    states = torch.randn(1, 3, frames, 12)
    base = encoder(states, frames).audio_embeds
    assert base.shape == (1, frames, N_TOK, AUDIO_DIM)
    changed = states.clone()
    changed[:, :, 3] += 5.0  # frame 3 is seen by latent frames 2, 3, 4 (context 1)
    moved = (encoder(changed, frames).audio_embeds - base).abs().amax(dim=(0, 2, 3))
    assert (moved > 1e-5).tolist() == [False, False, True, True, True, False]


def test_visual_adapter_raw_image_tokens_ablation(tmp_path):
    adapter = SyncDreamerVisualAdapter(image_embed_dim=24, num_queries=32, identity_dim=8, raw_image_tokens=True)
    image_embeds = torch.randn(2, 7, 24)
    tokens = adapter(image_embeds).identity_embeds
    assert tokens.shape == (2, 7, 8)  # one identity token per image token, no queries
    assert adapter.config.query_regions == [] and not hasattr(adapter, "queries")
    # no region queries: the localization loss has nothing to localize
    attention = torch.rand(2, 12, 7).softmax(-1)
    masks = torch.ones(2, 1, 3, 2, 2)
    assert attention_localization_loss(attention, masks, ["mouth"], adapter.config.query_regions) == 0
    adapter.save_pretrained(tmp_path)
    loaded = SyncDreamerVisualAdapter.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(image_embeds).identity_embeds, tokens)


REAL_CONFIGS = {
    "wan2.1-1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "wan2.1-14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
    "paper-42-blocks": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=42),
}


@pytest.mark.parametrize("name", list(REAL_CONFIGS))
def test_real_sized_configs_instantiate_on_meta(name):
    config = REAL_CONFIGS[name]
    with torch.device("meta"):
        ours = SyncDreamerTransformer3DModel(**config, text_dim=4096, identity_dim=1024, audio_dim=768)
        wan = WanTransformer3DModel(**config, text_dim=4096, in_channels=16)
    new = sum(p.numel() for p in ours.new_branch_parameters())
    base = sum(p.numel() for p in ours.parameters()) - new
    wan_count = sum(p.numel() for p in wan.parameters())
    # the base is Wan's, with the patch embedding widened from 16 to 36 input channels
    assert base - wan_count == 20 * 4 * config["num_attention_heads"] * config["attention_head_dim"]
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    per_block = 2 * (4 * inner * inner + 4 * inner + 2 * inner) + 2 * 2 * inner  # two WanAttention + two norms
    assert new == config["num_layers"] * per_block + (1024 + 768) * inner + 2 * (inner * inner + 2 * inner)
    print(f"{name}: base {base / 1e9:.3f} B, new branches {new / 1e9:.3f} B")


@torch.no_grad()
def test_position_embedding_starts_at_zero_tells_positions_apart_and_round_trips(tmp_path, model):
    """`position_embedding_grid`: a learned embedding per token position, zero when added to a trained model (which
    then works unchanged), saved with the model, interpolated to other grid sizes, trained as a new branch."""
    inputs = make_inputs()
    randomize_new_branches(model)
    config = {key: value for key, value in model.config.items() if key != "_use_default_values"}
    with_grid = SyncDreamerTransformer3DModel.from_config({**config, "position_embedding_grid": [H // 2, W // 2]})
    missing, unexpected = with_grid.load_state_dict(model.state_dict(), strict=False)
    assert missing == ["position_embedding.embedding"] and not unexpected
    assert torch.equal(with_grid(**inputs).sample, model(**inputs).sample)
    assert "position_embedding" in with_grid.new_branch_modules() and "position_embedding" not in model.new_branch_modules()

    with_grid.position_embedding.embedding.normal_(generator=torch.Generator().manual_seed(0))
    moved = with_grid(**inputs).sample
    assert (moved - model(**inputs).sample).abs().mean() > 1e-2
    with_grid.save_pretrained(tmp_path)
    loaded = SyncDreamerTransformer3DModel.from_pretrained(tmp_path)
    assert loaded.config.position_embedding_grid == [H // 2, W // 2]
    assert torch.equal(loaded(**inputs).sample, moved)
    wider = {**inputs, "hidden_states": torch.randn(B, 36, T, H, 2 * W)}
    assert loaded(**wider).sample.shape == (B, 16, T, H, 2 * W)
