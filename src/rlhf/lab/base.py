"""The lab's tokenizer and "pre-trained" base model, made locally and cached.

``build_base_model(spec)`` trains a byte-level BPE tokenizer on lab text (with a chat template and a
PAD token distinct from EOS), builds a small Llama model from a config, pretrains it with a plain
next-token loss on a corpus of lab documents, and saves both with ``save_pretrained`` under
``$RLHF_HOME/lab/base-<hash of the spec>/`` (``RLHF_HOME`` defaults to ``~/.cache/rlhf``). Everything is
deterministic from ``spec.seed``; a second call returns the cached folder.

The corpus mixes plain documents ("Question: ... Answer: ...", lists of sums) with chat transcripts,
and the responses in both are drawn from every demonstrator style, mostly the bad ones
(:data:`PRETRAIN_STYLE_MIX`): the base model knows the lab's language and the chat format but is no
assistant (it complies with harmful requests, agrees with false claims, rambles and refuses). SFT and
PPO have to make it one.

Chat format (``<|end|>`` is EOS and ends every turn)::

    <|bos|><|user|>What is 2 + 3?<|end|><|assistant|>2 + 3 = 5.<|end|>
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlhf.config import rlhf_home
from rlhf.lab import world
from rlhf.lab.world import CATEGORIES, FAMILIES, LabPrompt, demonstrate, make_prompt
from rlhf.training import (
    OptimSettings,
    atomic_dir,
    clip_gradients,
    make_optimizer,
    make_scheduler,
    save_pretrained,
)

# Bump when the corpus, tokenizer or pretraining code below changes what gets built.
BUILD_VERSION = 4

# Styles of the responses in the pretraining corpus: like text found in the wild, mostly not what an
# assistant should say (gold utility of a perfect imitation: 0.28, against 0.57 for the SFT
# demonstrators' mixture, ``rlhf.lab.world.DEMONSTRATOR_MIX``).
PRETRAIN_STYLE_MIX = {"ideal": 0.1, "verbose": 0.25, "wrong": 0.3, "over_refuse": 0.15, "sycophantic": 0.2}

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|end|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [PAD, BOS, EOS, *ROLE_TOKENS.values()]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class BaseModelSpec:
    """What the lab base model is made from; its hash names the cache folder."""

    seed: int = 0
    vocab_size: int = 1024  # BPE vocabulary, special tokens included
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    block_size: int = 128  # pretraining sequence length (tokens)
    max_positions: int = 512
    n_docs: int = 40_000  # pretraining documents
    steps: int = 400
    batch_size: int = 32
    lr: float = 5e-3
    warmup_steps: int = 30

    def digest(self) -> str:
        """Names the cache folder: the spec, :data:`BUILD_VERSION`, and the source of ``rlhf.lab.world``
        (a change to the lab's text makes a new base model rather than reusing a stale one)."""
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        h.update(f"{BUILD_VERSION}".encode())
        h.update(Path(world.__file__).read_bytes())
        return h.hexdigest()[:12]


def lab_seed(name: str) -> int | None:
    """The seed of a lab base model alias (``lab`` is seed 0, ``lab:N`` seed N), or None for any other name."""
    match = re.fullmatch(r"lab(?::(\d+))?", name)
    return None if match is None else int(match.group(1) or 0)


def model_folder(name: str, build: bool = True) -> Path | None:
    """The folder of the lab base model ``name`` (``lab``, ``lab:N``), built on first use; None for any
    other name. ``rlhf.modeling`` finds the lab's models through this (its ``MODEL_SOURCES``); with
    ``build=False`` nothing is built and any path returned may not exist yet."""
    seed = lab_seed(name)
    if seed is None:
        return None
    spec = BaseModelSpec(seed=seed)
    return build_base_model(spec) if build else rlhf_home() / "lab"


# ---------------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------------


def _plain_document(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:  # a list of sums: arithmetic facts
        pairs = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(rng.randint(3, 8))]
        return " ".join(f"{a} + {b} = {a + b}." for a, b in pairs)
    if kind < 0.22:  # a list of category members
        category = rng.choice(sorted(CATEGORIES))
        items = rng.sample(CATEGORIES[category], rng.randint(2, 5))
        return f"Some {category}: " + ", ".join(items) + "."
    p = make_prompt(rng.choice(FAMILIES), rng)
    return f"Question: {p.text}\nAnswer: {demonstrate(p, rng, PRETRAIN_STYLE_MIX)[1]}"


def chat_example(rng: random.Random) -> tuple[LabPrompt, list[dict[str, str]]]:
    """A one-turn conversation with a response in a style drawn from :data:`PRETRAIN_STYLE_MIX`."""
    p = make_prompt(rng.choice(FAMILIES), rng)
    return p, [*p.messages(), {"role": "assistant", "content": demonstrate(p, rng, PRETRAIN_STYLE_MIX)[1]}]


def corpus(n_docs: int, seed: int, tokenizer: PreTrainedTokenizerFast | None = None) -> list[str]:
    """``n_docs`` pretraining documents. With a tokenizer, 40% are chat transcripts rendered by its chat
    template; without one (to train the tokenizer itself), all are plain text."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        if tokenizer is not None and rng.random() < 0.4:
            docs.append(tokenizer.apply_chat_template(chat_example(rng)[1], tokenize=False))
        else:
            text = _plain_document(rng)
            docs.append(text if tokenizer is None else f"{BOS}{text}{EOS}")
    return docs


# ---------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes, no UNK; digits split one by one) with the lab's special
    tokens and chat template."""
    tok = Tokenizer(models.BPE())
    # Digits are single tokens, never merged with a space or each other: "6" in "What is 6 + 5?" and in
    # "6 + 5 = 11." is the same token, so copying a number is one attention lookup.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS.values()),
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


# ---------------------------------------------------------------------------------------------------
# Model and pretraining
# ---------------------------------------------------------------------------------------------------


def make_model(spec: BaseModelSpec, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def pack(docs: list[str], tokenizer: PreTrainedTokenizerFast, block_size: int) -> torch.Tensor:
    """Concatenate the documents' tokens and cut them into rows: ``(n_blocks, block_size)``."""
    ids = [i for row in tokenizer(docs, add_special_tokens=False)["input_ids"] for i in row]
    n = len(ids) // block_size
    return torch.tensor(ids[: n * block_size]).view(n, block_size)


@torch.no_grad()
def lm_loss(model: LlamaForCausalLM, blocks: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token loss (nats per token) over packed blocks."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        batch = blocks[i : i + batch_size]
        total += model(input_ids=batch, labels=batch).loss.item() * batch.numel()
        count += batch.numel()
    return total / count


def pretrain(model: LlamaForCausalLM, blocks: torch.Tensor, spec: BaseModelSpec, log=print) -> list[float]:
    """Next-token pretraining on random packed blocks: AdamW, linear warmup, cosine decay to 10% of the
    peak, gradient clipping at 1 (the optimiser and schedule every stage uses). Returns each step's loss."""
    settings = OptimSettings(
        lr=spec.lr, weight_decay=0.1, betas=(0.9, 0.95), warmup_steps=spec.warmup_steps, min_lr_ratio=0.1
    )
    opt = make_optimizer(model, settings)
    sched = make_scheduler(opt, spec.steps, settings)
    gen = torch.Generator().manual_seed(spec.seed)
    model.train()
    losses = []
    for step in range(spec.steps):
        batch = blocks[torch.randint(len(blocks), (spec.batch_size,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        clip_gradients(model, settings.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log and (step % 100 == 0 or step == spec.steps - 1):
            log(f"pretrain step {step + 1}/{spec.steps} loss {loss.item():.3f}")
    return losses


def build_base_model(spec: BaseModelSpec | None = None, home: Path | None = None, log=print) -> Path:
    """Build (or find in the cache) the lab base model and tokenizer; return their folder.

    The folder holds a ``transformers`` model and tokenizer (load them with ``from_pretrained``) and
    ``lab_base.json``: the spec, the parameter count, the pretraining time and the held-out loss.
    """
    spec = spec or BaseModelSpec()
    home = home or rlhf_home()
    final = home / "lab" / f"base-{spec.digest()}"
    if (final / "lab_base.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    random.seed(spec.seed)
    tokenizer = train_tokenizer(corpus(spec.n_docs // 4, spec.seed), spec.vocab_size)
    train_blocks = pack(corpus(spec.n_docs, spec.seed, tokenizer), tokenizer, spec.block_size)
    heldout_blocks = pack(
        corpus(max(200, spec.n_docs // 20), spec.seed + 1_000_003, tokenizer), tokenizer, spec.block_size
    )
    model = make_model(spec, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    if log:
        log(f"lab base model: {n_params / 1e6:.2f}M parameters, {train_blocks.numel():,} pretraining tokens")
    losses = pretrain(model, train_blocks, spec, log=log)
    heldout = lm_loss(model, heldout_blocks)
    seconds = time.perf_counter() - start
    info = {
        "spec": asdict(spec),
        "n_params": n_params,
        "pretrain_seconds": round(seconds, 1),
        "train_loss_last50": sum(losses[-50:]) / len(losses[-50:]),
        "heldout_loss": heldout,
        "torch": torch.__version__,
    }
    with atomic_dir(final) as tmp:  # a crash never leaves a folder that looks complete
        save_pretrained(model, tokenizer, tmp)
        (tmp / "lab_base.json").write_text(json.dumps(info, indent=2))
    if log:
        log(f"lab base model ready in {seconds:.0f}s: held-out loss {heldout:.3f} -> {final}")
    return final
