"""``--push-to-hub REPO``: ``final/`` with its model card onto the Hugging Face Hub, through ``huggingface_hub``.

:func:`check_hub` runs before any work: offline mode, an unreachable Hub or a missing token stop the run at once
with one line, rather than after the training they would otherwise follow.
"""
from __future__ import annotations

import os
from pathlib import Path

from ernie_common.errors import UserError, first_line

TRUE = {"1", "ON", "YES", "TRUE"}
LATER = "or drop --push-to-hub and upload final/ later (`hf upload REPO RUN/final`)"


class HubError(UserError):
    """The Hub cannot take the push; the message names the fix."""


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (``huggingface_hub`` reads it once, at import)."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in TRUE


def check_hub(repo: str, timeout_s: float = 10) -> None:
    """Raise :class:`HubError` unless the Hub answers and a token is there to push ``repo`` with."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import get_session

    if offline():
        raise HubError(f"--push-to-hub {repo} needs the Hugging Face Hub but HF_HUB_OFFLINE is set: unset it, {LATER}")
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout_s)
    except OSError as exc:  # requests' errors are OSErrors
        raise HubError(f"--push-to-hub {repo}: {constants.ENDPOINT} is unreachable ({first_line(exc)[:160]}): "
                       f"go online, {LATER}") from None
    if get_token() is None:
        raise HubError(f"--push-to-hub {repo}: no Hugging Face token: run `hf auth login` or set HF_TOKEN")


def push_folder(folder: str | Path, repo: str) -> str:
    """Create ``repo`` (if new) and upload ``folder`` into it; the URL of the commit."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo,
                               commit_message="Distilled student with its model card (compressor.distill)")
    return commit.commit_url
