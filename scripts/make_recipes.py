"""Writes the config-only pipeline recipes `pipelines/syncdreamer-wan2.1-1.3b` and `-14b`: model_index.json and
every component's config, no weights (instantiate with `from_config`; fill with
`scripts/convert_wan_to_syncdreamer.py` and training). The tokenizer is Wan's umT5 tokenizer, not copied here.

    python scripts/make_recipes.py --output pipelines
"""

import argparse
import json
from pathlib import Path

from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, UMT5Config, Wav2Vec2Config, Wav2Vec2FeatureExtractor

from syncdreamer_hf.models.audio_dynamics import AudioDynamicsEncoder
from syncdreamer_hf.models.transformer_syncdreamer import SyncDreamerTransformer3DModel
from syncdreamer_hf.models.visual_adapter import SyncDreamerVisualAdapter

# Wan2.1-T2V sizes (the published 1.3B and 14B configs)
TRANSFORMERS = {
    "1.3b": {"num_attention_heads": 12, "attention_head_dim": 128, "ffn_dim": 8960, "num_layers": 30},
    "14b": {"num_attention_heads": 40, "attention_head_dim": 128, "ffn_dim": 13824, "num_layers": 40},
}
UMT5_XXL = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False)
CLIP_VIT_L14 = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                image_size=224, patch_size=14, projection_dim=768)
WAV2VEC2_BASE = Wav2Vec2Config()  # facebook/wav2vec2-base-960h: 12 layers x 768


def write_recipe(directory: Path, size: str):
    with init_empty_weights():  # configs only: no memory for the 14B weights
        components = {
            "transformer": SyncDreamerTransformer3DModel.from_config(
                {**TRANSFORMERS[size], "text_dim": 4096, "identity_dim": 1024, "audio_dim": 768}
            ),
            "visual_adapter": SyncDreamerVisualAdapter.from_config({"image_embed_dim": 1024, "identity_dim": 1024}),
            "audio_dynamics_encoder": AudioDynamicsEncoder.from_config(
                {"audio_feature_dim": 768, "num_audio_layers": 13}
            ),
            "vae": AutoencoderKLWan.from_config({}),
        }
    for name, model in components.items():
        model.save_config(directory / name)
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0).save_config(
        directory / "scheduler"
    )
    UMT5_XXL.save_pretrained(directory / "text_encoder")
    CLIP_VIT_L14.save_pretrained(directory / "image_encoder")
    WAV2VEC2_BASE.save_pretrained(directory / "audio_encoder")
    CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(
        directory / "image_processor"
    )
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(
        directory / "feature_extractor"
    )
    model_index = {
        "_class_name": "SyncDreamerPipeline",
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "image_processor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModel"],
        "visual_adapter": ["syncdreamer_hf.models.visual_adapter", "SyncDreamerVisualAdapter"],
        "feature_extractor": ["transformers", "Wav2Vec2FeatureExtractor"],
        "audio_encoder": ["transformers", "Wav2Vec2Model"],
        "audio_dynamics_encoder": ["syncdreamer_hf.models.audio_dynamics", "AudioDynamicsEncoder"],
        "transformer": ["syncdreamer_hf.models.transformer_syncdreamer", "SyncDreamerTransformer3DModel"],
        "num_frames_per_window": 81,
        "num_motion_frames": 8,
        "default_height": 480,
        "default_width": 832,
    }
    (directory / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="pipelines")
    args = parser.parse_args()
    for size in TRANSFORMERS:
        directory = Path(args.output) / f"syncdreamer-wan2.1-{size}"
        write_recipe(directory, size)
        print(f"wrote {directory}")


if __name__ == "__main__":
    main()
