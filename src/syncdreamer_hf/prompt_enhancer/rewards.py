"""GRPO rewards for the prompt enhancer, with TRL's reward-function signature `f(prompts, completions, **kwargs)`.

Three rewards, each in [0, 1] and each multiplied by `gaming_penalty`, because a reward built from keyword counts
alone is gamed within ~80 GRPO steps (the policy learned to repeat one word):

- `VisualRelevanceReward`: CLIP image-text similarity when a CLIP model is given, otherwise recall of the image's
  attributes (the `attributes` dataset column); divided by 1 + the number of visual words the image does not show.
- `ActionSpecificityReward`: a named body part, a motion verb and a direction/manner/timing word.
- `FluencyReward`: per-token likelihood under a frozen base language model.

Completions may be plain strings or conversational (`[{"role": "assistant", "content": ...}]`).
"""

import json
import math
import re

import torch

ATTRIBUTE_KEYS = ("clothing", "background", "objects", "body_pose", "implicit_actions")

BODY_PARTS = frozenset(
    "head face eye eyes gaze eyebrow eyebrows mouth lips chin jaw neck shoulder shoulders arm arms elbow elbows hand "
    "hands wrist wrists finger fingers palm palms thumb torso chest hip hips body leg legs knee knees foot feet".split()
)
MOTION_VERBS = frozenset(
    "raise lift lower wave nod tilt turn shake point gesture lean look glance smile shrug clap bow blink reach hold "
    "rotate cross open close move swing touch tap rub sway bend stretch straighten drop extend grab pick place put "
    "adjust brush rest spread fold flip write type speak sing laugh frown".split()
)
MODIFIERS = frozenset(
    "left right up down forward forwards backward backwards toward towards away upward upwards downward downwards "
    "sideways aside across around back slowly quickly gently briefly softly firmly smoothly steadily calmly "
    "repeatedly twice once then while before after during until again rhythmically slightly fully halfway".split()
)
# Words that name something visible; used to catch attributes that the image does not show.
VISUAL_WORDS = frozenset(
    "red orange yellow green blue purple pink brown black white gray grey beige gold silver striped "
    "jacket coat shirt blouse sweater hoodie dress suit tie scarf hat cap glasses sunglasses uniform vest "
    "office studio kitchen street park beach garden library classroom bedroom stage forest city room wall window "
    "desk table chair sofa shelf bookshelf plant lamp laptop computer phone microphone cup mug book notebook pen "
    "pencil guitar bottle flowers painting clock".split()
)
STOPWORDS = frozenset(
    "a an the and or of in on at to with from by for his her their its is are was be while then into over "
    "under behind near next".split()
)


def _text(message) -> str:
    """Text of a completion/prompt: a string, a message dict, or a list of messages with str or typed content."""
    if isinstance(message, str):
        return message
    if isinstance(message, dict):
        content = message.get("content") or message.get("text") or ""  # datasets fills absent keys with None
        return content if isinstance(content, str) else " ".join(_text(part) for part in content)
    return " ".join(_text(part) for part in message)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _lemmas(word: str) -> set[str]:
    """The word and its forms with a common English suffix removed: raises/raised/raising -> raise."""
    forms = {word}
    for suffix in ("s", "es", "d", "ed", "ing"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            stem = word[: -len(suffix)]
            forms |= {stem, stem + "e", stem[:-1]}  # stem[:-1] undoes a doubled consonant: nodding -> nod
    return forms


def _count_in(words: list[str], vocabulary: frozenset) -> int:
    return sum(bool(_lemmas(word) & vocabulary) for word in words)


def _as_attributes(attributes) -> dict:
    """The `attributes` column: a dict or its JSON string."""
    return json.loads(attributes) if isinstance(attributes, str) else dict(attributes or {})


def _attribute_words(attributes: dict) -> set[str]:
    """Content words of all attribute values (strings or lists of strings)."""
    values = [value for value in attributes.values() if value]
    text = " ".join(value if isinstance(value, str) else " ".join(map(str, value)) for value in values)
    return {word for word in _words(text) if word not in STOPWORDS}


def gaming_penalty(text: str, max_words: int = 80) -> float:
    """Factor in [0, 1] against reward gaming: 0 for empty text or a run of three identical words; otherwise
    the share of distinct word bigrams (repetition) times `max_words / n_words` beyond the length cap."""
    words = _words(text)
    if not words or any(words[i] == words[i + 1] == words[i + 2] for i in range(len(words) - 2)):
        return 0.0
    bigrams = list(zip(words, words[1:]))
    distinct = len(set(bigrams)) / len(bigrams) if bigrams else 1.0
    return distinct * min(1.0, max_words / len(words))


class ActionSpecificityReward:
    """Mean of three indicators (a body part, a motion verb, a direction/manner/timing word), times
    `gaming_penalty` and a keyword-stuffing factor (keywords beyond half of the words lower the score)."""

    def __init__(self, max_words: int = 80):
        self.max_words = max_words

    def score(self, text: str) -> float:
        words = _words(text)
        if not words:
            return 0.0
        counts = [_count_in(words, vocabulary) for vocabulary in (BODY_PARTS, MOTION_VERBS, MODIFIERS)]
        keyword_share = sum(counts) / len(words)
        stuffing = min(1.0, 2.0 * (1.0 - keyword_share))
        return sum(count > 0 for count in counts) / 3 * stuffing * gaming_penalty(text, self.max_words)

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return [self.score(_text(completion)) for completion in completions]


class VisualRelevanceReward:
    """How well a completion matches the reference image.

    With `clip_model` (a `CLIPModel`) and `clip_processor`: cosine similarity of CLIP image and text embeddings,
    clipped at 0; the image comes from the `image` or `images` column. Otherwise: recall of the content words of
    the `attributes` column. Either way divided by 1 + the number of visual words (colours, clothing, places,
    objects) that neither the attributes nor the user's prompt contain, and times `gaming_penalty`.
    """

    def __init__(self, clip_model=None, clip_processor=None, max_words: int = 80):
        if (clip_model is None) != (clip_processor is None):
            raise ValueError("pass both `clip_model` and `clip_processor`, or neither to use attribute recall.")
        self.clip_model = clip_model.eval() if clip_model is not None else None
        self.clip_processor = clip_processor
        self.max_words = max_words

    def score(self, text: str, attributes: dict, prompt: str = "") -> float:
        """Attribute recall of `text`, with the hallucination and gaming penalties."""
        attribute_words = _attribute_words(attributes)
        mentioned = {lemma for word in _words(text) for lemma in _lemmas(word)}
        recall = len(attribute_words & mentioned) / len(attribute_words) if attribute_words else 0.0
        return recall * self.penalty(text, attribute_words, prompt)

    def penalty(self, text: str, attribute_words: set[str], prompt: str = "") -> float:
        known = attribute_words | set(_words(prompt))
        hallucinated = {word for word in _words(text) if _lemmas(word) & VISUAL_WORDS and not _lemmas(word) & known}
        return gaming_penalty(text, self.max_words) / (1 + len(hallucinated))

    @torch.no_grad()
    def clip_similarity(self, images, texts: list[str]) -> list[float]:
        device = self.clip_model.device
        inputs = self.clip_processor(text=texts, images=images, return_tensors="pt", padding=True, truncation=True)
        outputs = self.clip_model(**{key: value.to(device) for key, value in inputs.items()})
        image_embeds = torch.nn.functional.normalize(outputs.image_embeds, dim=-1)
        text_embeds = torch.nn.functional.normalize(outputs.text_embeds, dim=-1)
        return (image_embeds * text_embeds).sum(-1).clamp(min=0).tolist()

    def __call__(self, prompts, completions, attributes=None, image=None, images=None, **kwargs) -> list[float]:
        texts = [_text(completion) for completion in completions]
        prompt_texts = [_text(prompt) for prompt in prompts]
        attribute_dicts = [_as_attributes(a) for a in attributes] if attributes is not None else [{}] * len(texts)
        if self.clip_model is None:
            if attributes is None:
                raise ValueError("attribute recall needs an `attributes` dataset column; or pass a CLIP model.")
            return [self.score(*args) for args in zip(texts, attribute_dicts, prompt_texts)]
        if image is None and images is None:
            raise ValueError("CLIP relevance needs an `image` (or `images`) dataset column with the reference image.")
        image = image if image is not None else [image_list[0] for image_list in images]
        similarities = self.clip_similarity(image, texts)
        return [
            similarity * self.penalty(text, _attribute_words(attrs), prompt)
            for similarity, text, attrs, prompt in zip(similarities, texts, attribute_dicts, prompt_texts)
        ]


class FluencyReward:
    """exp(mean per-token log-likelihood) of the completion under a frozen causal LM (1 / perplexity), times
    `gaming_penalty`: a fluent LM alone rates "step step step ..." highly, hence the penalty."""

    def __init__(self, model, tokenizer, max_words: int = 80, batch_size: int = 16):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's tokenizer
        self.max_words = max_words
        self.batch_size = batch_size

    @torch.no_grad()
    def likelihood(self, texts: list[str]) -> list[float]:
        """Per-token likelihood exp(mean log p(token | previous tokens)); each text starts after the EOS token."""
        start = self.tokenizer.bos_token or self.tokenizer.eos_token
        scores = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                [start + text for text in texts[i : i + self.batch_size]],
                return_tensors="pt",
                padding=True,
                padding_side="right",
                add_special_tokens=False,
            ).to(self.model.device)
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
            log_probs = logits[:, :-1].log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]  # (B, T-1)
            mask = batch.attention_mask[:, 1:].float()
            mean_log_prob = (log_probs * mask).sum(1) / mask.sum(1).clamp(min=1)
            scores += [math.exp(value) if count else 0.0 for value, count in zip(mean_log_prob.tolist(), mask.sum(1))]
        return scores

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        texts = [_text(completion) for completion in completions]
        return [
            likelihood * gaming_penalty(text, self.max_words)
            for likelihood, text in zip(self.likelihood(texts), texts)
        ]
