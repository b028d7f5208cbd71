"""Qwen2-VL family processors that load without torchvision.

`AutoProcessor` builds a video processor for every Qwen2-VL family model, and that needs torchvision, which CPU
machines here do not have (transformers 5.24 still requires it). The enhancer only sends images, so where the video processor
cannot load we build the same processor class from its image processor and tokenizer alone.
"""

import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES


def image_only_processor_class(processor_class: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """Subclass of `processor_class` (e.g. `Qwen2VLProcessor`) built from an image processor and a tokenizer.

    It keeps the parent's name, so `save_pretrained` writes the same `processor_config.json` as the official class
    and the folder loads with the official class wherever torchvision is installed.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        processor_class.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return type(processor_class.__name__, (processor_class,), {"__init__": __init__, "__module__": __name__})


def load_processor(pretrained_model_name_or_path, **kwargs) -> ProcessorMixin:
    """`AutoProcessor.from_pretrained`, falling back to the image-only processor where no video processor loads."""
    try:
        processor = AutoProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
    except (OSError, ImportError):  # the video processor needs torchvision
        processor = None
    if isinstance(processor, ProcessorMixin):  # without torchvision AutoProcessor may also return a bare tokenizer
        return processor
    config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **kwargs)
    processor_class = getattr(transformers, PROCESSOR_MAPPING_NAMES[config.model_type])
    tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
    image_processor = AutoImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
    return image_only_processor_class(processor_class)(image_processor, tokenizer, chat_template=tokenizer.chat_template)
