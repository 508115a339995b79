"""Gold-judge evaluation of a model on held-out lab prompts."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf.lab.judge import gold_utility, n_words
from rlhf.lab.world import LabPrompt, sample_prompts
from rlhf.sampling import SamplingSettings, generate

# Evaluation prompts are drawn from their own seed range, away from any training seed.
EVAL_SEED = 9_999


@dataclass
class GoldReport:
    prompts: list[LabPrompt]
    responses: list[str]
    utilities: list[float]

    @property
    def mean(self) -> float:
        return sum(self.utilities) / len(self.utilities)

    def by_family(self) -> dict[str, float]:
        groups: dict[str, list[float]] = defaultdict(list)
        for p, u in zip(self.prompts, self.utilities):
            groups[p.family].append(u)
        return {family: sum(us) / len(us) for family, us in sorted(groups.items())}

    def mean_words(self) -> float:
        return sum(n_words(r) for r in self.responses) / len(self.responses)


def gold_eval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    n: int = 120,
    seed: int = EVAL_SEED,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
) -> GoldReport:
    """Sample one response for each of ``n`` held-out lab prompts and score it with the gold judge."""
    prompts = sample_prompts(n, seed)
    sampling = SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature)
    responses = generate(model, tokenizer, [p.messages() for p in prompts], sampling, seed=seed)
    return GoldReport(prompts, responses, [gold_utility(p, r) for p, r in zip(prompts, responses)])
