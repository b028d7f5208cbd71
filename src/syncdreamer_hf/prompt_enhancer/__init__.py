"""Cross-modal prompt enhancer: a Qwen2-VL family model (+ LoRA trained with GRPO) that turns a short prompt and a
reference image into a motion instruction, and the rewards it is trained with."""

from .enhancer import SyncDreamerPromptEnhancer, parse_attributes
from .processing import load_processor
from .rewards import ActionSpecificityReward, FluencyReward, VisualRelevanceReward, gaming_penalty

__all__ = [
    "ActionSpecificityReward",
    "FluencyReward",
    "SyncDreamerPromptEnhancer",
    "VisualRelevanceReward",
    "gaming_penalty",
    "load_processor",
    "parse_attributes",
]
