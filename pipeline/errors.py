"""Errors meant for people: each is printed as one line and ends the command with a non-zero exit."""


class PipelineError(Exception):
    """A problem the user can fix; its message says what is wrong and what to do."""

    exit_code = 2


class ConfigError(PipelineError):
    """A configuration value that is invalid."""


class DataError(PipelineError):
    """Input data that cannot be used."""


class UpstreamMissing(PipelineError):
    """A stage run alone found no usable run of a stage it depends on."""


class TrainingDiverged(PipelineError):
    """The loss became NaN or infinite."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that runs end KILLED like after Ctrl-C."""
