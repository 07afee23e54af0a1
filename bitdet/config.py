"""Loading configs for every bitdet tool: Detectron2's yacs ``CfgNode``, safely, with clear
errors.

Detection, pretraining, fine-tuning and benchmark configs each define their keys in an
``add_*_config(cfg)`` function; this module finds a config file (a path, a path under
``configs/``, or a shipped config's unique file name: :func:`resolve_config_file`) and merges
it and ``KEY VALUE`` overrides, so that every failure names the file or override to fix.

A ``_BASE_`` is looked for relative to the file that names it (Detectron2's rule), then as the
shipped config of that file name, so a shipped config copied elsewhere and edited still runs.

Devices follow one rule everywhere (:func:`check_device`): a config that asks for CUDA on a
machine without it stops with one line naming the key to add, instead of torch's driver error.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import yaml
from detectron2.config import CfgNode

from bitdet.errors import ConfigError, UserError

__all__ = [
    "CONFIG_KINDS",
    "CONFIGS_DIR",
    "DeviceError",
    "check_device",
    "check_weights",
    "load_yaml_chain",
    "merge_config",
    "resolve_config_file",
    "resolve_device",
    "shipped_configs",
]

# Shipped configs: package data (in a checkout, bitdet/configs links to the top-level configs/).
# Laid out as Detectron2's model zoo: COCO-Detection/, COCO-InstanceSegmentation/, pretrain/,
# finetune/, benchmark/, demo/, quick_schedules/ (every instant test), common/ (LazyConfig
# pieces); detection Base-* files at the top, the other kinds' in their folder.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

BASE_KEY = "_BASE_"

# The kinds of config a tool reads. A config's kind is its top folder under configs/ (pretrain/,
# finetune/, benchmark/), or for one in quick_schedules/ the kind its _BASE_ chain reaches;
# detection configs are the rest (COCO-Detection/, COCO-InstanceSegmentation/, demo/, ...).
CONFIG_KINDS = ("detection", "pretrain", "finetune", "benchmark")

# configs/ folders that hold pieces of configs (LazyConfig modules), not configs to run.
_PIECES = ("common",)


def _config_files(configs_dir: Path) -> List[str]:
    """Every config under ``configs_dir`` (YAML, and LazyConfig ``.py`` outside the pieces'
    folders), as sorted paths relative to it."""
    names = [p.relative_to(configs_dir).as_posix() for p in configs_dir.rglob("*.yaml")]
    names += [
        p.relative_to(configs_dir).as_posix()
        for p in configs_dir.rglob("*.py")
        if p.relative_to(configs_dir).parts[0] not in _PIECES and "__pycache__" not in p.parts
    ]
    return sorted(names)


def _kind_of(name: str, configs_dir: Path) -> str:
    """The kind (:data:`CONFIG_KINDS`) of the config at ``configs_dir / name``."""
    folders = set(CONFIG_KINDS) - {"detection"}
    path = configs_dir / name
    for _ in range(16):  # a _BASE_ chain is a few files long; a loop stops here
        top = path.resolve().relative_to(configs_dir.resolve()).parts[0]
        if top in folders:
            return top
        if top != "quick_schedules" or path.suffix != ".yaml":
            return "detection"
        base = (yaml.safe_load(path.read_text()) or {}).get(BASE_KEY)
        if base is None:
            return "detection"
        path = path.parent / str(base)
    return "detection"


def shipped_configs(kind: Optional[str] = None, configs_dir: Path = CONFIGS_DIR) -> List[str]:
    """The shipped configs (paths relative to ``configs_dir``) of one of :data:`CONFIG_KINDS`,
    or all."""
    if kind is not None and kind not in CONFIG_KINDS:
        raise ValueError(f"config kind {kind!r}: choose one of {CONFIG_KINDS}")
    names = _config_files(configs_dir)
    if kind is None:
        return names
    return [n for n in names if _kind_of(n, configs_dir) == kind]


def _by_file_name(name: str, configs_dir: Path, kind: Optional[str]) -> Path | None:
    """The one shipped config (of ``kind``, or any) whose file name is ``name``.

    Raises:
        ConfigError: two configs share that file name, naming both paths.
    """
    if os.path.dirname(name):
        return None
    found = [n for n in shipped_configs(kind, configs_dir) if os.path.basename(n) == name]
    if len(found) > 1:
        raise ConfigError(
            f"config {name!r} is ambiguous: {' and '.join(found)} under {configs_dir}; "
            "name one by its path under configs/"
        )
    return configs_dir / found[0] if found else None


def resolve_config_file(
    path: str, configs_dir: Path = CONFIGS_DIR, kind: Optional[str] = None
) -> str:
    """The config file ``path`` names: a path (absolute or from the working directory), else a
    path under ``configs/`` (e.g. ``COCO-Detection/retinanet_bit_m.yaml``), else the one shipped
    config of the tool's kind with that file name (a bare name such as ``retinanet_bit_m.yaml``).

    Args:
        kind: the tool's kind of config (:data:`CONFIG_KINDS`): a bare file name is looked for
            among those, and a missing file's message names the closest of those ("did you
            mean ...?"), else lists them.

    Raises:
        FileNotFoundError: naming the places searched and the shipped configs of that kind.
        ConfigError: a bare file name that two shipped configs share, naming both; a shipped
            config of another kind than ``kind``, naming its kind.
    """
    if os.path.isfile(path):
        _check_kind(path, Path(path), configs_dir, kind)  # configs/... from a checkout
        return path
    shipped_path = configs_dir / path.removeprefix("configs/")
    if shipped_path.is_file():
        _check_kind(path, shipped_path, configs_dir, kind)
        return str(shipped_path)
    found = _by_file_name(path, configs_dir, kind)
    if found is not None:
        return str(found)
    shipped = shipped_configs(kind, configs_dir)
    where = f"config {path!r} not found here or in {configs_dir}"
    other = _of_another_kind(path, configs_dir, kind)
    if other:
        where += f"; {other}"
    close = _closest(path.removeprefix("configs/"), shipped)
    if close:
        raise FileNotFoundError(f"{where}; did you mean {close}?")
    runnable = [
        n for n in shipped if not os.path.basename(n).startswith("Base-")
    ]  # bases only hold defaults
    raise FileNotFoundError(
        f"{where}; shipped {kind + ' ' if kind else ''}configs: {', '.join(runnable)}"
    )


def _closest(path: str, shipped: Sequence[str], cutoff: float = 0.6) -> Optional[str]:
    """The shipped config closest to ``path``, comparing both whole paths and file names (a bare
    name is judged against file names, not against the folder names of the others)."""
    scores = []
    for name in shipped:
        by_path = difflib.SequenceMatcher(None, path, name).ratio()
        by_file = difflib.SequenceMatcher(
            None, os.path.basename(path), os.path.basename(name)
        ).ratio()
        scores.append((max(by_path, by_file), name))
    best = max(scores, key=lambda s: s[0], default=(0.0, None))
    return best[1] if best[0] >= cutoff else None


def _check_kind(path: str, file: Path, configs_dir: Path, kind: Optional[str]) -> None:
    """Refuse ``file`` (given as ``path``) if it is a shipped config of a kind other than
    ``kind``: its keys are another tool's."""
    try:
        name = file.resolve().relative_to(configs_dir.resolve()).as_posix()
    except ValueError:  # not a shipped config
        return
    other = _of_another_kind(name, configs_dir, kind)
    if other:
        raise ConfigError(f"config {path!r}: {other}" if name != path else f"config {other}")


def _of_another_kind(path: str, configs_dir: Path, kind: Optional[str]) -> str:
    """For a shipped config of a kind other than ``kind`` (by path under ``configs/`` or unique
    file name): a note naming its path and kind; else ``""``."""
    if kind is None:
        return ""
    name = path.removeprefix("configs/")
    if not (configs_dir / name).is_file():
        try:
            found = _by_file_name(name, configs_dir, None)
        except ConfigError:  # a file name two configs share: no single one to name
            return ""
        if found is None:
            return ""
        name = found.relative_to(configs_dir).as_posix()
    other = _kind_of(name, configs_dir)
    return f"{name} is a {other} config, not a {kind} one" if other != kind else ""


def _resolve_base(base: str, referrer: Path, configs_dir: Path) -> Path:
    """The file a ``_BASE_`` in ``referrer`` names: relative to it, else a path under the shipped
    configs, else the shipped config of that file name (a shipped config copied elsewhere keeps
    its bases)."""
    expanded = Path(os.path.expanduser(base))
    local = expanded if expanded.is_absolute() else referrer.parent / expanded
    if local.is_file():
        return local
    shipped = configs_dir / base.removeprefix("configs/")
    if shipped.is_file():
        return shipped
    found = _by_file_name(expanded.name, configs_dir, None)
    if found is not None:
        return found
    error = FileNotFoundError(
        f"_BASE_ {base!r} is neither {local} nor a shipped config in {configs_dir}"
    )
    error.filename = base
    raise error


def _merge_dicts(child: dict, base: dict, file: Path) -> None:
    """Merge ``child`` into ``base`` in place; the child's values win, sections merge key by key."""
    for key, value in child.items():
        if isinstance(value, dict) and key in base:
            if not isinstance(base[key], dict):
                raise ConfigError(
                    f"config {file}: {key} is a section here but a value in its _BASE_"
                )
            _merge_dicts(value, base[key], file)
        else:
            base[key] = value


def load_yaml_chain(
    path: os.PathLike, configs_dir: Path = CONFIGS_DIR, _seen: Tuple[Path, ...] = ()
) -> dict:
    """A config file's keys with its ``_BASE_`` chain merged in (bases resolved as the module says).

    Plain YAML only (``yaml.safe_load``): tags that build Python objects are refused.

    Raises:
        FileNotFoundError: a ``_BASE_`` names a file that exists nowhere.
        ConfigError: invalid YAML, a file that is not a mapping, or a ``_BASE_`` cycle.
    """
    path = Path(path)
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.constructor.ConstructorError as e:
        raise ConfigError(
            f"config {path}: refusing a YAML tag that builds Python objects (configs must be plain "
            f"YAML; such tags can run code when loaded): {e}"
        ) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(
            f"config {path}: expected KEY: value mappings, found a {type(data).__name__}"
        )
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    base_path = _resolve_base(str(base), path, configs_dir).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise ConfigError(f"config {path}: _BASE_ chain loops back to {base_path}")
    merged = load_yaml_chain(base_path, configs_dir, (*_seen, path.resolve()))
    _merge_dicts(data, merged, path)
    return merged


def merge_config(
    cfg: CfgNode,
    config_file: str | None = None,
    opts: Sequence[str] = (),
    configs_dir: Path = CONFIGS_DIR,
    kind: Optional[str] = None,
) -> CfgNode:
    """Merge a config file (``_BASE_`` chains allowed) and ``KEY VALUE`` overrides into ``cfg``.

    YAML tags that build Python objects are refused: they can run code. ``config_file`` and
    ``kind``: as :func:`resolve_config_file`.

    A key that ``cfg`` registers as renamed (``cfg.register_renamed_key``) is refused, in the
    file (its ``_BASE_`` chain included) and in the overrides, naming the new key.

    Raises:
        ConfigError: an unknown or renamed key, a value of the wrong type, or invalid YAML,
            naming the file or the override.
        FileNotFoundError: the file, or a ``_BASE_`` it names, does not exist.
    """
    if config_file:
        path = resolve_config_file(config_file, configs_dir, kind)
        try:
            merged = load_yaml_chain(path, configs_dir)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"config {path}: its _BASE_ chain names a missing file: {e}"
            ) from e
        # The merged chain goes through the config class's own merge_from_file (Detectron2
        # upgrades old config versions there), from a file without _BASE_. bitdet's configs
        # without a VERSION are of the current one (else Detectron2 guesses, naming the copy).
        _refuse_renamed(cfg, _dotted_keys(merged), f"config {path}")
        if "VERSION" in cfg and "VERSION" not in merged:
            merged["VERSION"] = cfg.VERSION
        with tempfile.TemporaryDirectory(prefix="bitdet_cfg_") as tmp:
            flat = Path(tmp) / Path(path).name
            flat.write_text(yaml.safe_dump(merged, sort_keys=False))
            try:
                cfg.merge_from_file(str(flat), allow_unsafe=False)
            except (AssertionError, KeyError, ValueError) as e:  # yacs reports bad keys as asserts
                raise ConfigError(f"config {path}: {_message(e, cfg)}") from e
    _refuse_renamed(cfg, [str(k) for k in list(opts)[::2]], f"config override {list(opts)}")
    try:
        cfg.merge_from_list(list(opts))
    except (AssertionError, KeyError, ValueError) as e:
        raise ConfigError(f"config override {list(opts)}: {_message(e, cfg)}") from e
    return cfg


def _dotted_keys(mapping: dict, prefix: str = "") -> List[str]:
    """The full keys (``A.B.C``) of a nested mapping's values."""
    keys = []
    for name, value in mapping.items():
        full = f"{prefix}{name}"
        keys += _dotted_keys(value, f"{full}.") if isinstance(value, dict) and value else [full]
    return keys


def _refuse_renamed(cfg: CfgNode, keys: Sequence[str], where: str) -> None:
    """Raise a one-line :class:`ConfigError` for the first of ``keys`` that ``cfg`` registers as
    renamed, naming the new key (and the note registered with it)."""
    renamed = cfg.__dict__.get(CfgNode.RENAMED_KEYS, {})
    for key in keys:
        if key in renamed:
            new, note = renamed[key] if isinstance(renamed[key], tuple) else (renamed[key], "")
            raise ConfigError(
                f"{where}: {key} was renamed to {new}" + (f"; {note}" if note else "")
            )


# MODEL.WEIGHTS spellings that name no weights source, and what to write instead.
_NOT_WEIGHTS = {
    "scratch": "no weights (random initialisation) is ''",
    "official": "name the official checkpoint, e.g. BiT-M-R50x1",
}


def check_weights(value: str, key: str = "MODEL.WEIGHTS") -> str:
    """``value`` stripped, for a weights setting: a file, an official name (``BiT-M-R50x1``), an
    ``hf-hub:`` id, or ``""`` for no weights (random initialisation), in every tool.

    Raises:
        ConfigError: ``"scratch"`` or ``"official"`` (no weights is ``""``; an official
            checkpoint goes by its name), naming ``key``.
    """
    text = str(value).strip()
    hint = _NOT_WEIGHTS.get(text.lower())
    if hint:
        raise ConfigError(f"{key} {value!r}: {hint}")
    return text


class DeviceError(UserError, RuntimeError):
    """A config names a device this machine does not have."""


def check_device(device: str, key: str = "MODEL.DEVICE") -> None:
    """Refuse a CUDA device this machine lacks, naming the config key to change.

    Args:
        device: the config's value: "cpu", "cuda", "cuda:N", or "" / "auto" (CUDA when present).
        key: the config key it came from, for the message.

    Raises:
        DeviceError: "no CUDA device: add MODEL.DEVICE cpu", or a ``cuda:N`` beyond the count.
    """
    import torch

    device = str(device).strip()
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise DeviceError(f"no CUDA device: add {key} cpu (the config says {key} {device!r})")
    index = device.partition(":")[2]
    if index.isdigit() and int(index) >= torch.cuda.device_count():
        raise DeviceError(
            f"{key} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )


def resolve_device(device: str, key: str = "MODEL.DEVICE") -> str:
    """The torch device a process runs a config's device value on, checked.

    "cpu" -> "cpu"; "cuda" -> ``cuda:<local rank>`` (each process on its local GPU, as
    Detectron2 places them); "" / "auto" -> that GPU when CUDA is present, else "cpu".

    Raises:
        DeviceError: as :func:`check_device`, or a value other than "", "auto", "cpu", "cuda".
    """
    import torch
    from detectron2.utils import comm

    device = str(device).strip()
    check_device(device, key)
    if device not in ("", "auto", "cpu", "cuda"):
        raise DeviceError(
            f"{key} {device!r}: use 'cpu', 'cuda' (each process takes its local GPU) or '' (CUDA "
            "when present)"
        )
    if device == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{comm.get_local_rank()}"


# yacs' messages for a key the config lacks (merge_from_list / a file's keys).
_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")


def _full_keys(node: CfgNode, prefix: str = "") -> List[str]:
    keys = []
    for name, value in node.items():
        keys += (
            _full_keys(value, f"{prefix}{name}.")
            if isinstance(value, CfgNode)
            else [f"{prefix}{name}"]
        )
    return keys


def _message(error: Exception, cfg: Optional[CfgNode] = None) -> str:
    """An exception's text without the quotes ``str(KeyError)`` adds; for a key ``cfg`` lacks,
    the closest of its keys ("did you mean ...?")."""
    message = str(error.args[0]) if len(error.args) == 1 else str(error)
    unknown = _UNKNOWN_KEY.search(message)
    if cfg is not None and unknown:
        close = difflib.get_close_matches(unknown.group(1), _full_keys(cfg), n=1, cutoff=0.75)
        if close:
            message += f" (did you mean {close[0]}?)"
    return message
