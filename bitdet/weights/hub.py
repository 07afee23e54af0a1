"""Weights from the Hugging Face hub: ``hf-hub:<repo>[@<revision>]``, through ``huggingface_hub``.

The files come from (and go into) the hub client's own cache (``HF_HUB_CACHE``, default
``~/.cache/huggingface/hub``); ``HF_HUB_OFFLINE=1`` reads only that cache. One request, without
retries and with a short timeout, first asks whether the hub answers; when it does not (no
network), only the cache is read, so an uncached id fails in seconds instead of after the
client's retries with back-off. A revision
(a branch, tag or commit hash) pins the files, as in timm's ``hf-hub:`` ids. Examples:
``hf-hub:timm/resnetv2_50x1_bit.goog_in21k``, ``hf-hub:google/bit-50@main``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from bitdet.weights.errors import CheckpointError

__all__ = ["HUB_PREFIX", "HubWeights", "is_hub_id", "parse_hub_id", "hub_weights"]

HUB_PREFIX = "hf-hub:"
# Weight files a hub repository may hold, preferred first (timm and transformers both write these).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Seconds to wait for the hub's answer to the one reachability request.
REACH_TIMEOUT = 5.0


@dataclass(frozen=True)
class HubWeights:
    """A hub repository's weights file in the local cache, and its ``config.json`` if it has one."""

    repo_id: str
    revision: Optional[str]
    path: Path
    config: Optional[Dict[str, Any]]


def is_hub_id(source: Any) -> bool:
    """Whether ``source`` is an ``hf-hub:`` id."""
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def parse_hub_id(source: str) -> Tuple[str, Optional[str]]:
    """``"hf-hub:org/name@rev"`` -> ``("org/name", "rev")`` (revision None when absent)."""
    repo = source[len(HUB_PREFIX) :]
    repo, _, revision = repo.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise CheckpointError(
            f"{source!r} is not a hub id: expected hf-hub:<org>/<name>[@<revision>]"
        )
    return repo, revision or None


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _unreachable(repo_id: str, filename: str, revision: Optional[str]) -> Optional[str]:
    """None when the hub answers one metadata request for ``filename`` (even "not found"); else why
    not, in words. One try, no retries, :data:`REACH_TIMEOUT` seconds."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        # the metadata request does not retry (the client's default: fall back to the cache fast)
        get_hf_file_metadata(
            hf_hub_url(repo_id, filename, revision=revision), timeout=REACH_TIMEOUT
        )
    except HfHubHTTPError:
        return None  # an HTTP answer (a missing file or revision is reported by the download)
    except Exception as e:  # no answer at all: DNS, connection, timeout, proxy, TLS
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


def hub_weights(source: str) -> HubWeights:
    """Download (or find in the cache) the weights file of ``source`` and its ``config.json``.

    Raises:
        CheckpointError: the repository, revision or weights file cannot be found; the message
            says where it looked and how to get the files without network access.
    """
    repo_id, revision = parse_hub_id(source)
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
    except ImportError as e:
        raise CheckpointError(
            f"{source}: hub ids need the huggingface_hub package (pip install huggingface_hub)"
        ) from e

    unreachable = None if _offline() else _unreachable(repo_id, WEIGHT_FILES[0], revision)
    cache_only = _offline() or unreachable is not None

    def fetch(filename: str) -> Optional[Path]:
        try:
            return Path(
                hf_hub_download(repo_id, filename, revision=revision, local_files_only=cache_only)
            )
        except EntryNotFoundError:  # also LocalEntryNotFoundError: offline and not cached
            return None
        except (HfHubHTTPError, OSError, ValueError) as e:
            raise CheckpointError(f"{source}: the hub could not provide {filename}: {e}") from e

    for filename in WEIGHT_FILES:
        path = fetch(filename)
        if path is not None:
            break
    else:
        where = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
        at = f"{f' (revision {revision})' if revision else ''}"
        if not cache_only:
            raise CheckpointError(
                f"{source}: the hub repository {repo_id}{at} has none of {', '.join(WEIGHT_FILES)}"
            )
        why = (
            "HF_HUB_OFFLINE is set"
            if _offline()
            else f"the hub could not be reached ({unreachable})"
        )
        raise CheckpointError(
            f"{source}: none of {', '.join(WEIGHT_FILES)} is in the hub cache {where}{at} and "
            f"{why}. Where there is network, run `hf download {repo_id}` (or load the model once), "
            "then copy that cache folder here."
        )
    config_path = fetch("config.json")
    config = None
    if config_path is not None:
        try:
            config = json.loads(config_path.read_text())
        except ValueError as e:
            raise CheckpointError(
                f"{source}: config.json in {config_path.parent} is not valid JSON: {e}"
            ) from e
    return HubWeights(repo_id, revision, path, config)
