"""User-facing errors: the CLI prints the message (no traceback) and exits with code 2."""


class AlignlabError(Exception):
    """Something the user can fix: bad config, bad data, missing file. The message says what and where."""


class DataError(AlignlabError, ValueError):
    """A dataset row or file is malformed. Messages name the file, the row and the field."""


class ConfigError(AlignlabError, ValueError):
    """A config key or value is invalid."""


class Interrupted(AlignlabError):
    """Ctrl-C during training, after the checkpoint was saved: the CLI exits with 130, as shells do."""
