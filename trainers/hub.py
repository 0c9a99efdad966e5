"""Reachability of the Hugging Face hub, checked before anything downloads.

Without this check an unreachable hub shows up as minutes of retries and a stack trace;
with it the user reads one line that names the offline alternative.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from qsweep.trainers.errors import HubUnavailable

PROBE_TIMEOUT_S = 5.0


def endpoint() -> str:
    """The hub endpoint, honouring ``HF_ENDPOINT`` as huggingface_hub does."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline_mode() -> bool:
    """True when the user asked for the local cache only (``HF_HUB_OFFLINE=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the hub endpoint answers an HTTP request at all (any status counts)."""
    request = urllib.request.Request(endpoint() + "/api/whoami-v2", method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=timeout_s)  # noqa: S310 (fixed scheme)
    except urllib.error.HTTPError:
        return True  # it answered, if only to refuse
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


def require_hub(what: str, offline_hint: str) -> None:
    """Raise :class:`HubUnavailable` with one clear line if ``what`` cannot be downloaded.

    In offline mode (``HF_HUB_OFFLINE=1``) the local cache is used and no probe is made.
    """
    if offline_mode():
        return
    if not reachable():
        raise HubUnavailable(
            f"cannot reach the Hugging Face hub at {endpoint()} to download {what}. {offline_hint}"
        )
