"""The two errors `runtime` raises for what a caller can fix; each message is one line naming the fix."""
from __future__ import annotations


class BackendUnavailable(RuntimeError):
    """This machine cannot run the requested back end; the message says what to install or change."""


class ModelDirError(ValueError):
    """The directory cannot be served as a classifier; the message names the fix."""
