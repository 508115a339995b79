"""rlhf: a readable RLHF system (SFT -> reward model -> PPO) that runs end to end on a laptop CPU.

Stages live one per module; the shared pieces (data formats, the lab world) are modules of their own:

- ``rlhf.data``: dataset loading, format detection and validation (TRL formats, HH-RLHF transcripts).
- ``rlhf.lab``: the built-in world whose human preferences are known exactly (prompts, gold judge,
  simulated annotators, demonstrators, tokenizer and a small pretrained base model).
"""

__version__ = "0.1.0"
