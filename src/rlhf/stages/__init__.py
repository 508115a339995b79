"""The stages, one module each, none importing another: ``sft``, ``collect`` (preferences from the lab's
annotators), ``rm`` (the reward model), ``ppo``, ``eval``. Each is one config class and one top-down
loop standing on the libraries of ``rlhf``; ``rlhf.pipeline.STAGES`` is the table that runs them.
"""
