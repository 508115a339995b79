"""The lab: a small world whose human preferences are known exactly.

- ``world``: prompt families with ground truth, and demonstrators that answer in several styles;
- ``judge``: the gold judge, the "true" utility u(prompt, response) in [-1, 1], and its detectors;
- ``annotators``: simulated annotators (noise, length / sycophancy / position biases, ties) and presets;
- ``base``: the lab tokenizer and the small pretrained base model, made locally and cached.
"""

from rlhf.lab.annotators import PRESETS, Annotator, Preset, bayes_accuracy, expected_agreement, get_preset
from rlhf.lab.base import BaseModelSpec, build_base_model
from rlhf.lab.judge import agrees, expresses_uncertainty, gold_utility, is_refusal
from rlhf.lab.world import FAMILIES, STYLES, LabPrompt, demonstrate, make_prompt, respond, sample_prompts

__all__ = [
    "FAMILIES",
    "PRESETS",
    "STYLES",
    "Annotator",
    "BaseModelSpec",
    "LabPrompt",
    "Preset",
    "agrees",
    "bayes_accuracy",
    "build_base_model",
    "demonstrate",
    "expected_agreement",
    "expresses_uncertainty",
    "get_preset",
    "gold_utility",
    "is_refusal",
    "make_prompt",
    "respond",
    "sample_prompts",
]
