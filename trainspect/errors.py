"""The one error type trainspect raises, so callers can catch ours and only ours."""


class TrainspectError(Exception):
    """Bad input or an unusable store: the message names the argument, file or line."""
