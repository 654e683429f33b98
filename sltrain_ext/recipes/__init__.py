"""Recipes: files of sltrain-train settings, ``--recipe NAME`` or ``--recipe FILE``.

A recipe is a JSON object (or, on Python 3.11 and later, a TOML table)
whose keys are the flags of sltrain-train without their dashes
(``"batch-size": 512``; ``batch_size`` is the same key) and whose values
have the flag's type: a number, a string, true/false for a switch. Two keys
are not flags: ``description`` (text) and ``notes`` (an object of text by
key: where each value comes from). Flags given on the command line override
the recipe's. Paths in a recipe are read as on the command line, from the
current directory.

The shipped recipes (``sltrain_ext/recipes/*.json``, by name: ``60m``,
``130m``, ``350m``, ``1b``, ``7b``) are the SLTrain paper's runs as its code
ran them; each value's source is in the recipe's ``notes``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any

__all__ = ["Recipe", "RecipeError", "apply", "available", "blame"]

_DIR = Path(__file__).parent
_NOT_FLAGS = {"description": str, "notes": dict}
_UNSET = object()


class RecipeError(ValueError):
    """A recipe that cannot be read or used; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str  # as --recipe gave it
    path: Path
    sha256: str
    contents: dict[str, Any]
    keys: dict[str, str]  # argparse dest -> the recipe's key, for every setting the command line left to it

    def record(self) -> dict[str, Any]:
        """What run.json keeps of it: the file, its hash and its contents, and
        which of its keys the command line overrode."""
        return {"name": self.name, "path": str(self.path.resolve()), "sha256": self.sha256,
                "contents": self.contents,
                "overridden": sorted(key for key in self.contents if key not in _NOT_FLAGS
                                     and key not in self.keys.values())}


def available() -> list[str]:
    """The shipped recipes' names, smallest model first."""
    names = [path.stem for path in _DIR.glob("*.json")]
    return sorted(names, key=lambda n: float(n[:-1]) * (1000 if n.endswith("b") else 1))


def _locate(name: str) -> Path:
    path = Path(name)
    if path.suffix or path.exists():
        if not path.is_file():
            raise RecipeError(f"--recipe {name}: no such file")
        return path
    shipped = _DIR / f"{name.lower()}.json"
    if not shipped.exists():
        raise RecipeError(f"--recipe {name}: not a file, nor one of the shipped recipes {', '.join(available())}")
    return shipped


def _read(path: Path) -> tuple[bytes, dict[str, Any]]:
    raw = path.read_bytes()
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:
            raise RecipeError(f"--recipe {path}: TOML recipes need Python 3.11 or later (tomllib); "
                              "write it as JSON") from None
        try:
            return raw, tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise RecipeError(f"--recipe {path}: not valid TOML ({error})") from None
    try:
        contents = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RecipeError(f"--recipe {path}: not valid JSON ({error})") from None
    if not isinstance(contents, dict):
        raise RecipeError(f"--recipe {path}: a recipe is a JSON object of flag: value, got {type(contents).__name__}")
    return raw, contents


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Recipe key -> the parser's action, for every long flag but --help and --recipe."""
    return {option.removeprefix("--"): action for action in parser._actions for option in action.option_strings
            if option.startswith("--") and action.dest not in ("help", "recipe")}


def _converted(action: argparse.Action, value: Any, where: str) -> Any:
    """`value` as the flag's type, or a RecipeError saying what was wanted."""
    kind = action.type or str
    if action.nargs == 0:
        wanted, fits = "true or false", isinstance(value, bool)
    elif kind is int:
        wanted, fits = "an integer", isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        wanted, fits = "a number", isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        wanted, fits = "a string", isinstance(value, str)
    if not fits:
        raise RecipeError(f"{where} must be {wanted}, got {json.dumps(value)}")
    converted = value if action.nargs == 0 else kind(value)
    if action.choices is not None and converted not in action.choices:
        raise RecipeError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {json.dumps(value)}")
    return converted


def apply(parser: argparse.ArgumentParser, argv: list[str] | None) -> Recipe | None:
    """Reads the recipe that `argv` names with --recipe (None without one),
    checks every key, and makes its values the parser's defaults, so the
    flags of `argv` override them. Raises RecipeError naming the file and
    the key at fault."""
    finder = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    finder.add_argument("--recipe")
    name = finder.parse_known_args(argv)[0].recipe
    if name is None:
        return None
    path = _locate(name)
    raw, contents = _read(path)
    flags = _flags(parser)
    defaults: dict[str, Any] = {}
    keys: dict[str, str] = {}
    for key, value in contents.items():
        where = f"--recipe {path}: key {key!r}"
        if key in _NOT_FLAGS:
            if not isinstance(value, _NOT_FLAGS[key]):
                raise RecipeError(f"{where} must be {'text' if _NOT_FLAGS[key] is str else 'an object'}")
            continue
        flag = key.replace("_", "-")
        if flag == "recipe":
            raise RecipeError(f"{where}: a recipe cannot name another recipe")
        if flag not in flags:
            close = difflib.get_close_matches(flag, flags, n=1)
            raise RecipeError(f"--recipe {path}: unknown key {key!r}"
                              + (f" (did you mean {close[0]!r}?)" if close else "")
                              + "; the keys are the flags of sltrain-train without their dashes")
        action = flags[flag]
        defaults[action.dest] = _converted(action, value, where)
        keys[action.dest] = key
    # The settings the command line gives itself are the recipe's no longer.
    unset = argparse.Namespace(**{action.dest: _UNSET for action in parser._actions})
    given = {dest for dest, value in vars(parser.parse_args(argv, namespace=unset)).items() if value is not _UNSET}
    parser.set_defaults(**defaults)
    return Recipe(name=name, path=path, sha256=hashlib.sha256(raw).hexdigest(), contents=contents,
                  keys={dest: key for dest, key in keys.items() if dest not in given})


def blame(message: str, recipe: Recipe | None) -> str:
    """A flag's error message (each begins with the flag it is about), naming
    the recipe file and key when the recipe gave that flag its value."""
    flag = re.match(r"--([a-z][a-z-]*)", message)
    if recipe is None or flag is None:
        return message
    key = recipe.keys.get(flag.group(1).replace("-", "_"))
    return message if key is None else f"--recipe {recipe.path}: key {key!r}: {message}"
