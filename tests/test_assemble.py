"""scripts/convert_wan_to_syncdreamer.py on tiny local stand-ins of Wan2.1-T2V-Diffusers, wav2vec2 and CLIP."""

from pathlib import Path

import numpy as np
import torch
from diffusers import WanTransformer3DModel

from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline
from syncdreamer_hf.tiny import AUDIO_DIM, IDENTITY_DIM, TEXT_DIM, TINY_PIPELINE_CONFIG, build_tiny_components
from _scripts import load_script



def save_stand_ins(root: Path) -> tuple[str, str, str]:
    """Folders laid out like the Hub repos: a Wan2.1 T2V Diffusers repo, a wav2vec2 repo, a CLIP repo."""
    parts = build_tiny_components(seed=1)
    wan, wav2vec2, clip = root / "wan", root / "wav2vec2", root / "clip"
    for name in ("tokenizer", "text_encoder", "vae", "scheduler"):
        parts[name].save_pretrained(wan / name)
    torch.manual_seed(2)
    WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
    ).save_pretrained(wan / "transformer")
    parts["audio_encoder"].save_pretrained(wav2vec2)
    parts["feature_extractor"].save_pretrained(wav2vec2)
    parts["image_encoder"].save_pretrained(clip)
    parts["image_processor"].save_pretrained(clip)
    return str(wan), str(wav2vec2), str(clip)


def test_assembled_pipeline_keeps_wan_weights_runs_and_round_trips(tmp_path):
    wan, wav2vec2, clip = save_stand_ins(tmp_path)
    pipe = load_script("scripts/convert_wan_to_syncdreamer").assemble_pipeline(
        wan, wav2vec2, clip, identity_dim=IDENTITY_DIM, audio_dim=AUDIO_DIM, **TINY_PIPELINE_CONFIG
    )
    wan_transformer = WanTransformer3DModel.from_pretrained(wan, subfolder="transformer")
    ours = pipe.transformer.state_dict()
    for name, weight in wan_transformer.state_dict().items():
        if name != "patch_embedding.weight":
            torch.testing.assert_close(ours[name], weight, msg=name)
    torch.testing.assert_close(ours["patch_embedding.weight"][:, :16], wan_transformer.patch_embedding.weight)
    assert pipe.audio_dynamics_encoder.config.num_audio_layers == pipe.audio_encoder.config.num_hidden_layers + 1

    pipe.set_progress_bar_config(disable=True)
    arguments = {
        "image": np.full((32, 32, 3), 128, np.uint8), "audio": np.zeros(5760, np.float32), "sample_rate": 16000,
        "prompt": "a person talks", "num_inference_steps": 2, "max_sequence_length": 16,
    }
    frames = pipe(**arguments, generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 9, 32, 32, 3)

    pipe.save_pretrained(tmp_path / "assembled")
    loaded = SyncDreamerPipeline.from_pretrained(tmp_path / "assembled")
    loaded.set_progress_bar_config(disable=True)
    reloaded = loaded(**arguments, generator=torch.Generator().manual_seed(0)).frames
    np.testing.assert_allclose(reloaded, frames, atol=1e-6)  # float32 reassociation after the reload
