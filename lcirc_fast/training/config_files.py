"""The files a training config is read from or names, read before anything is built.

* `read_yaml`: a YAML config (safe loader) in which a key given twice at any depth is refused,
  naming the key and both lines, instead of the last value silently winning.
* `read_deepspeed_json`: a DeepSpeed JSON file, which must hold one object.
* `base_position_limit`: the base model's max_position_embeddings, from its config.json (no
  weights are read).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ConfigError

SMOLLM2_POSITIONS = 8192   # SmolLM2-135M's context (its GGUF's llama.context_length)


class DuplicateKey(Exception):
    """A mapping of a YAML document names `key` twice (lines are 1-based)."""

    def __init__(self, key, line: int, first_line: int):
        super().__init__(key, line, first_line)
        self.key, self.line, self.first_line = key, line, first_line


def _unique_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """SafeLoader that raises DuplicateKey for a key given twice in one mapping (a merge key
        `<<` may still supply defaults that an explicit key then overrides)."""

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        if key in seen:
                            raise DuplicateKey(key, key_node.start_mark.line + 1, seen[key])
                        seen[key] = key_node.start_mark.line + 1
                    except TypeError:       # an unhashable key: the base class reports it
                        continue
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def load_yaml_text(text: str, where: str):
    """The YAML document `text`; ConfigError naming `where` (a file, or --set item) when it is not
    valid YAML or gives a key twice."""
    import yaml

    try:
        return yaml.load(text, Loader=_unique_loader())   # a SafeLoader subclass
    except DuplicateKey as e:
        raise ConfigError(f"{where} line {e.line}: key {e.key!r} appears twice (first on line "
                          f"{e.first_line}); keep one") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}") from None


def read_yaml(path: Path) -> dict:
    """The mapping of a YAML config file; ConfigError naming the file otherwise."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    data = load_yaml_text(text, f"config file {path}")
    if not data:
        raise ConfigError(f"config file {path} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys (stage, base, lcirc, data, "
                          f"train, ...), not a {type(data).__name__}")
    return data


def read_deepspeed_json(path: str | os.PathLike, key: str = "distributed.deepspeed_config") -> dict:
    """The object of a DeepSpeed JSON file; ConfigError naming `key` and the file otherwise."""
    where = f"{key} = {os.fspath(path)!r}"
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{where}: no such file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where}: {p} is not valid JSON ({' '.join(str(e).split())}); give a "
                          "DeepSpeed JSON object such as {\"zero_optimization\": {\"stage\": 2}}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {p} holds a JSON {type(data).__name__}, not an object of "
                          "DeepSpeed settings such as {\"zero_optimization\": {\"stage\": 2}}")
    return data


def base_position_limit(name: str, tiny: dict) -> tuple[int, str] | None:
    """(max_position_embeddings, where it comes from) of the base model `name`, or None when
    its config does not say (an unreadable directory is reported by the base model's own check).

    tiny_random: `tiny` over LlamaConfig's default; the bundled SmolLM2: its converted
    config.json when it exists, else the GGUF's context; a directory: its config.json.
    """
    from ..assets import SMOLLM2_ALIASES, SMOLLM2_CACHE_NAME, SMOLLM2_NAME

    if name == "tiny_random":
        if "max_position_embeddings" in tiny:
            return int(tiny["max_position_embeddings"]), "base.tiny.max_position_embeddings"
        from transformers import LlamaConfig

        return int(LlamaConfig().max_position_embeddings), "LlamaConfig's default max_position_embeddings"
    if name == SMOLLM2_NAME or name in SMOLLM2_ALIASES:
        root = os.environ.get("LCIRC_CACHE_DIR") or os.path.join(Path.home(), ".cache", "lcirc_fast")
        path = Path(root).expanduser() / SMOLLM2_CACHE_NAME / "config.json"
        found = _config_positions(path) if path.is_file() else None
        return (found or SMOLLM2_POSITIONS), f"the max_position_embeddings of {SMOLLM2_NAME}"
    path = Path(name) / "config.json"
    found = _config_positions(path) if path.is_file() else None
    return (found, f"max_position_embeddings in {path}") if found else None


def _config_positions(path: Path) -> int | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
