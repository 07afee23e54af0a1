"""Loading configs for every bitdet tool: Detectron2's yacs ``CfgNode``, safely and with clear errors.

Detection, pretraining, fine-tuning and benchmark configs each define their keys in an
``add_*_config(cfg)`` function; this module finds a config file (a path, or a name under
``configs/``) and merges it and ``KEY VALUE`` overrides, so that every failure names the file
or override to fix.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import yaml
from detectron2.config import CfgNode

__all__ = ["CONFIGS_DIR", "merge_config", "resolve_config_file"]

# Shipped configs: package data (in a checkout, bitdet/configs links to the top-level configs/).
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def resolve_config_file(path: str, configs_dir: Path = CONFIGS_DIR) -> str:
    """``path`` itself if it exists, else the file of that name (or relative path) under ``configs/``.

    Raises:
        FileNotFoundError: naming the places searched and the shipped configs.
    """
    if os.path.isfile(path):
        return path
    candidates = [configs_dir / path, *sorted(configs_dir.rglob(os.path.basename(path)))]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    shipped = sorted(str(p.relative_to(configs_dir)) for p in configs_dir.rglob("*.yaml"))
    raise FileNotFoundError(f"config {path!r} not found here or in {configs_dir}; shipped configs: {shipped}")


def merge_config(cfg: CfgNode, config_file: str | None = None, opts: Sequence[str] = (),
                 configs_dir: Path = CONFIGS_DIR) -> CfgNode:
    """Merge a config file (``_BASE_`` chains allowed) and ``KEY VALUE`` overrides into ``cfg``.

    YAML tags that build Python objects are refused (``allow_unsafe=False``): they can run code.

    Raises:
        ValueError: an unknown key, a value of the wrong type, or invalid YAML, naming the file
            or the override.
        FileNotFoundError: the file, or a ``_BASE_`` it names, does not exist.
    """
    if config_file:
        path = resolve_config_file(config_file, configs_dir)
        try:
            cfg.merge_from_file(path, allow_unsafe=False)
        except (AssertionError, KeyError, ValueError) as e:  # yacs reports bad keys as asserts
            raise ValueError(f"config {path}: {e}") from e
        except FileNotFoundError as e:  # only a _BASE_ can be missing here: path exists
            raise FileNotFoundError(f"config {path}: its _BASE_ chain names a missing file: {e.filename}") from e
        except yaml.constructor.ConstructorError as e:
            raise ValueError(
                f"config {path}: refusing a YAML tag that builds Python objects (configs must be plain "
                f"YAML; such tags can run code when loaded): {e}"
            ) from e
        except yaml.YAMLError as e:
            raise ValueError(f"config {path}: not valid YAML: {e}") from e
    try:
        cfg.merge_from_list(list(opts))
    except (AssertionError, KeyError, ValueError) as e:
        raise ValueError(f"config override {list(opts)}: {e}") from e
    return cfg
