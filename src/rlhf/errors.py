"""The usage-error family: every problem a user can cause and fix, with a message that says where.

:class:`UsageError` is the base of every such error: a bad setting (``rlhf.config.ConfigError``), bad
data (``rlhf.data.DataError``), a missing model (``rlhf.modeling.ModelNotFoundError``), and the errors
below. Its message names the file, line, field, key or path, on one line; the ``rlhf`` command prints
``<label>: <message>`` and exits with ``exit_code`` (never a traceback). Code that calls the library
catches ``UsageError`` to tell a user's mistake from a bug.

    exit code  label          errors
    1          error          DataError, ModelNotFoundError, NotAModelError, NotARewardModelError,
                              DeviceError, RewardFunctionError, SettingsChangedError, StateError
    2          config error   ConfigError (a setting that fails validation)
    3          diverged       DivergedError (a non-finite loss, gradient norm, reward or weight)
    4          locked         RunLockedError (another process is using the run folder)
"""

from __future__ import annotations


class UsageError(Exception):
    """A problem the user can fix; the message says where (file, line, field, key or path)."""

    exit_code = 1
    label = "error"

    def one_line(self) -> str:
        """The message on one line (a multi-problem message joins its problems with ``; ``)."""
        return "; ".join(part.strip() for part in str(self).splitlines() if part.strip())


class NotAModelError(UsageError):
    """A folder or file that is not a model (no config, weights or tokenizer), or one that fails to load."""


class NotARewardModelError(UsageError):
    """A model loaded as a reward model whose head was not trained as one (see ``load_reward_model``)."""


class DeviceError(UsageError):
    """A device that is not available on this machine (``run.device=cuda`` without CUDA)."""


class RewardFunctionError(UsageError, ValueError):
    """A reward function that cannot be imported, or that returns something other than finite numbers."""


class SettingsChangedError(UsageError):
    """A rerun whose settings differ from those a stage's checkpoints or outputs were made with."""


class StateError(UsageError):
    """A run folder whose saved state cannot be used (every checkpoint unreadable, non-finite outputs)."""


class DivergedError(UsageError):
    """Training produced a non-finite value; the run stopped before saving anything after it."""

    exit_code = 3
    label = "diverged"


class RunLockedError(UsageError):
    """Another live process holds the lock of the run folder."""

    exit_code = 4
    label = "locked"
