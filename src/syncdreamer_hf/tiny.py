"""Tiny random-weight versions of every SyncDreamer pipeline component, built offline.

Nothing is downloaded: the umT5 tokenizer is a small Unigram model trained here with `tokenizers`, and every
model is a random init from a tiny config. `build_tiny_components` saves each component with `save_pretrained`
and loads it back with `from_pretrained`, so tests exercise the same loading code a user's checkpoint goes
through. Used by the tests, the benchmark and `scripts/make_tiny_random_pipeline.py`.
"""

import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from .models.audio_dynamics import AudioDynamicsEncoder
from .models.autoencoder_frame import SyncDreamerFrameAutoencoder
from .models.transformer_syncdreamer import SyncDreamerTransformer3DModel
from .models.visual_adapter import SyncDreamerVisualAdapter

# Widths shared by several components (the contracts between them).
TEXT_DIM = 32  # umT5 d_model = transformer text_dim
IMAGE_EMBED_DIM = 32  # CLIP vision hidden size = adapter input
IDENTITY_DIM = 16  # adapter output = transformer identity_dim
AUDIO_FEATURE_DIM = 32  # Wav2Vec2 hidden size = audio encoder input
AUDIO_DIM = 16  # audio tokens = transformer audio_dim
IMAGE_SIZE = 32  # CLIP input resolution

_CORPUS = [
    "a person talks to the camera, smiling, with natural head motion",
    "a woman in a red shirt speaks calmly in front of a plain background",
    "a man with short hair sings and raises his right hand",
    "the avatar nods while talking, eyes blinking, mouth moving with the words",
    "bright tones, overexposed, static, blurred details, worst quality, low quality",
]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A ~200-token Unigram tokenizer with T5's special tokens (`<pad>` 0, `</s>` 1, `<unk>` 2)."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _build(seed: int) -> dict:
    """The components, random-initialised (not yet round-tripped)."""
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        )
    )
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=IMAGE_EMBED_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=IMAGE_SIZE, patch_size=8, projection_dim=IMAGE_EMBED_DIM,
        )
    )
    visual_adapter = SyncDreamerVisualAdapter(
        image_embed_dim=IMAGE_EMBED_DIM, num_queries=8, hidden_dim=16, num_layers=1, num_attention_heads=2,
        identity_dim=IDENTITY_DIM,
    )
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )
    # The real feature encoder's kernels and strides (320 samples per feature, 50 Hz), narrow channels.
    audio_encoder = Wav2Vec2Model(
        Wav2Vec2Config(
            hidden_size=AUDIO_FEATURE_DIM, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
            do_stable_layer_norm=False, feat_extract_norm="group",
        )
    )
    audio_dynamics_encoder = AudioDynamicsEncoder(
        audio_feature_dim=AUDIO_FEATURE_DIM, num_audio_layers=audio_encoder.config.num_hidden_layers + 1,
        hidden_dim=16, tokens_per_latent_frame=4, audio_dim=AUDIO_DIM,
    )
    transformer = SyncDreamerTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
        text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
        identity_dim=IDENTITY_DIM, audio_dim=AUDIO_DIM,
    )
    # A real model starts its new branches at zero (it then reproduces Wan); a random test model needs them
    # non-zero so that identity and audio reach the output.
    for model in (transformer, visual_adapter, audio_dynamics_encoder):
        for parameter in model.parameters():
            if not parameter.detach().any():
                torch.nn.init.normal_(parameter, std=0.1)
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "scheduler": scheduler,
        "image_processor": image_processor,
        "image_encoder": image_encoder,
        "visual_adapter": visual_adapter,
        "feature_extractor": feature_extractor,
        "audio_encoder": audio_encoder,
        "audio_dynamics_encoder": audio_dynamics_encoder,
        "transformer": transformer,
    }


def build_tiny_components(seed: int = 0, directory: str | Path | None = None) -> dict:
    """Builds every pipeline component tiny and random, round-tripped through save/from_pretrained.

    Args:
        seed: torch seed of the random weights; the same seed gives the same weights.
        directory: where each component is saved (one subfolder per component); a temporary directory when
            `None`.

    Returns:
        `{name: component}` with the keyword names of `SyncDreamerPipeline.__init__`.
    """
    components = _build(seed)
    with tempfile.TemporaryDirectory() if directory is None else nullcontext(directory) as root:
        loaded = {}
        for name, component in components.items():
            component.save_pretrained(Path(root) / name)
            loader = AutoTokenizer if name == "tokenizer" else type(component)
            loaded[name] = loader.from_pretrained(Path(root) / name)
    for component in loaded.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return loaded


# Pipeline settings that fit the tiny components: 32x32 video (2x2 latent tokens), 9-frame windows.
TINY_PIPELINE_CONFIG = {"num_frames_per_window": 9, "num_motion_frames": 4, "default_height": 32, "default_width": 32}


def load_vae(path: str | Path) -> AutoencoderKLWan | SyncDreamerFrameAutoencoder:
    """A saved VAE of either class the pipeline takes, chosen by the `_class_name` of its config."""
    classes = {cls.__name__: cls for cls in (AutoencoderKLWan, SyncDreamerFrameAutoencoder)}
    name = AutoencoderKLWan.load_config(path)["_class_name"]
    if name not in classes:
        raise ValueError(f"{path} holds a {name}; expected one of {sorted(classes)}.")
    return classes[name].from_pretrained(path)


def save_tiny_training_setup(
    directory: str | Path,
    transformer_config: dict | None = None,
    height: int = 32,
    width: int = 32,
    num_frames: int = 9,
    num_clips: int = 2,
) -> tuple[Path, Path]:
    """A tiny random pipeline folder and the latent cache of synthetic clips preprocessed with it, for training
    checks and benchmarks: `(directory / "pipeline", directory / "cache")`.

    Args:
        transformer_config: a transformer of another size (`SyncDreamerTransformer3DModel` arguments; the widths
            that join it to the tiny encoders are filled in); default the tiny one.
        height, width, num_frames: the clips' video size and the frames per cached window.
    """
    from .data.preprocess import preprocess_dataset
    from .data.synthetic import write_clip_dataset
    from .pipeline_syncdreamer import SyncDreamerPipeline

    directory = Path(directory)
    components = build_tiny_components(seed=0)
    if transformer_config is not None:
        components["transformer"] = SyncDreamerTransformer3DModel(
            text_dim=TEXT_DIM, identity_dim=IDENTITY_DIM, audio_dim=AUDIO_DIM, **transformer_config
        )
    SyncDreamerPipeline(**components, **TINY_PIPELINE_CONFIG).save_pretrained(directory / "pipeline")
    clips = write_clip_dataset(directory / "clips", num_clips, seconds=1.0, height=height, width=width)
    preprocess_dataset(
        clips, directory / "pipeline", directory / "cache", height=height, width=width, num_frames=num_frames,
        max_sequence_length=16,
    )
    return directory / "pipeline", directory / "cache"
