"""Assembles an initial SyncDreamer pipeline from public parts and saves it (with its model card).

- umT5 tokenizer + text encoder, Wan VAE, scheduler settings and the transformer from a Wan2.1 Diffusers repo
  (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers` or `-14B-`); the transformer via `SyncDreamerTransformer3DModel.from_wan`
  (Wan's weights copied, extra input channels zero-padded, new branches zero-initialised: it reproduces Wan);
- Wav2Vec2 (`facebook/wav2vec2-base-960h`) and its feature extractor;
- a CLIP or SigLIP vision model and its image processor;
- a fresh visual adapter and audio dynamics encoder sized to fit them.

    python scripts/convert_wan_to_syncdreamer.py --wan Wan-AI/Wan2.1-T2V-1.3B-Diffusers \
        --output pipelines/syncdreamer-wan2.1-1.3b-init --torch-dtype bfloat16
"""

import argparse

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    CLIPVisionModel,
    SiglipVisionModel,
    UMT5EncoderModel,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from syncdreamer_hf.model_cards import write_model_card
from syncdreamer_hf.models.audio_dynamics import AudioDynamicsEncoder
from syncdreamer_hf.models.transformer_syncdreamer import SyncDreamerTransformer3DModel
from syncdreamer_hf.models.visual_adapter import SyncDreamerVisualAdapter
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline


def load_vision_model(name_or_path: str, torch_dtype):
    """CLIP or SigLIP vision tower (the vision half of a dual model is loaded alone)."""
    model_type = AutoConfig.from_pretrained(name_or_path).model_type
    vision_class = SiglipVisionModel if "siglip" in model_type else CLIPVisionModel
    return vision_class.from_pretrained(name_or_path, dtype=torch_dtype)


def assemble_pipeline(
    wan: str,
    wav2vec2: str = "facebook/wav2vec2-base-960h",
    image_encoder: str = "openai/clip-vit-large-patch14",
    identity_dim: int = 1024,
    audio_dim: int = 768,
    flow_shift: float = 3.0,
    torch_dtype: torch.dtype = torch.float32,
    **pipeline_config,
) -> SyncDreamerPipeline:
    """Builds the pipeline from the parts named (Hub ids or local folders)."""
    audio_encoder = Wav2Vec2Model.from_pretrained(wav2vec2, dtype=torch_dtype)
    vision = load_vision_model(image_encoder, torch_dtype)
    return SyncDreamerPipeline(
        tokenizer=AutoTokenizer.from_pretrained(wan, subfolder="tokenizer"),
        text_encoder=UMT5EncoderModel.from_pretrained(wan, subfolder="text_encoder", dtype=torch_dtype),
        vae=AutoencoderKLWan.from_pretrained(wan, subfolder="vae", dtype=torch.float32),
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift, num_train_timesteps=1000
        ),
        image_processor=AutoImageProcessor.from_pretrained(image_encoder),
        image_encoder=vision,
        visual_adapter=SyncDreamerVisualAdapter(
            image_embed_dim=vision.config.hidden_size, identity_dim=identity_dim
        ).to(torch_dtype),
        feature_extractor=Wav2Vec2FeatureExtractor.from_pretrained(wav2vec2),
        audio_encoder=audio_encoder,
        audio_dynamics_encoder=AudioDynamicsEncoder(
            audio_feature_dim=audio_encoder.config.hidden_size,
            num_audio_layers=audio_encoder.config.num_hidden_layers + 1,
            audio_dim=audio_dim,
        ).to(torch_dtype),
        transformer=SyncDreamerTransformer3DModel.from_wan(
            wan, subfolder="transformer", dtype=torch_dtype, identity_dim=identity_dim, audio_dim=audio_dim
        ),
        **pipeline_config,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wan", required=True, help="Wan2.1-T2V-*-Diffusers repo id or folder")
    parser.add_argument("--wav2vec2", default="facebook/wav2vec2-base-960h")
    parser.add_argument("--image-encoder", default="openai/clip-vit-large-patch14", help="CLIP or SigLIP")
    parser.add_argument("--identity-dim", type=int, default=1024)
    parser.add_argument("--audio-dim", type=int, default=768)
    parser.add_argument("--flow-shift", type=float, default=3.0, help="3.0 for 480p, 5.0 for 720p (as Wan)")
    parser.add_argument("--torch-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    pipe = assemble_pipeline(
        args.wan, args.wav2vec2, args.image_encoder, args.identity_dim, args.audio_dim, args.flow_shift,
        getattr(torch, args.torch_dtype),
    )
    pipe.save_pretrained(args.output)
    write_model_card(
        args.output,
        pipe,
        title=f"SyncDreamer initialised from {args.wan}",
        summary=(
            f"Untrained SyncDreamer: the transformer is {args.wan} (its new identity and audio branches are zero, "
            "so it still generates what Wan generates), with a fresh visual adapter and audio dynamics encoder. "
            "A starting point for training, not a talking-avatar model yet."
        ),
        weights_note=f"Parts: `{args.wan}`, `{args.wav2vec2}`, `{args.image_encoder}`; see their licences.",
    )
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
