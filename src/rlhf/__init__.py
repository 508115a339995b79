"""rlhf: a readable RLHF system (SFT -> reward model -> PPO) that runs end to end on a laptop CPU.

A flat row of stages (``rlhf.stages``: sft, collect, rm, ppo, eval; ``rlhf.pipeline`` runs them from its
stage table) standing on a flat set of libraries (``rlhf.data``, ``rlhf.encoding``, ``rlhf.modeling``,
``rlhf.sampling``, ``rlhf.scoring``, ``rlhf.rollout``, ``rlhf.losses``, ``rlhf.training``, ``rlhf.stats``,
...); ``rlhf.lab`` is the built-in world whose human preferences are known exactly, which stages receive
as a data source and a judge. The layering is checked by import-linter (``make lint``).
"""

__version__ = "0.1.0"
