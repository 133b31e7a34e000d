"""Label files and maps: ``{class id: name}`` from JSON files, dicts or lists (tasks and hub alike)."""
import json
import os
from typing import Dict


def read_json_file(path: str, option: str, what: str = "file"):
    """The JSON content of a file a task option names; errors name the file and the option."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path} (set by task.{option})")
    with open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"{what} {path} is not valid JSON: {err}") from None


def load_label_names(path: str, option: str = "label_file") -> Dict[int, str]:
    """{class id: name} from a JSON file: {"id": "name"}, {"id": ["name", ...]} or ["name", ...]."""
    return label_names_from(read_json_file(path, option, what="label map file"), f"label map file {path}")


def label_names_from(data, source: str) -> Dict[int, str]:
    """{class id: name} from {id: name} (int or str ids), {id: [name, ...]} or [name, ...]."""
    if not isinstance(data, (dict, list, tuple)):
        raise ValueError(f"{source} must hold {{class id: name}} or a list of names, got {type(data).__name__}")
    items = enumerate(data) if isinstance(data, (list, tuple)) else data.items()
    names = {}
    for key, value in items:
        try:
            idx = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: key {key!r} is not an integer class id") from None
        names[idx] = value[0] if isinstance(value, list) and value else str(value)
    return names
