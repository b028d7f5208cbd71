"""SyncDreamer: audio + reference image + text -> avatar video, as diffusers components.

Every model module is imported here: diffusers resolves a pipeline component's class from the module path in
`model_index.json` and only finds modules that are already imported.
"""

from .media import load_audio, load_image, load_video, save_video
from .models import (
    REGION_GROUPS,
    AudioDynamicsEncoder,
    AudioDynamicsOutput,
    SyncDreamerFrameAutoencoder,
    SyncDreamerTransformer3DModel,
    SyncDreamerTransformerOutput,
    SyncDreamerVisualAdapter,
    SyncDreamerVisualAdapterOutput,
)
from .pipeline_syncdreamer import SyncDreamerPipeline, SyncDreamerPipelineOutput

__version__ = "0.1.0"
