"""vitsearch's own exceptions.

Every error a user can cause by what they type or point at derives from `UserError`; the CLI prints
its message on one line and exits with code 2. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a config value, a search-space file, a dataset path, a results folder."""


class ConfigError(UserError):
    """A TrainConfig key or value is invalid."""


class DataError(UserError):
    """A dataset spec cannot be loaded (missing files, unreadable images)."""


class SpaceError(UserError):
    """A search-space file is invalid."""


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss; raised by the trainer, handled by its caller."""

    def __init__(self, epoch: int, first_step: int, last_step: int):
        self.epoch, self.first_step, self.last_step = epoch, first_step, last_step
        super().__init__(
            f"non-finite loss in epoch {epoch}, between optimizer steps {first_step} and {last_step}"
        )
