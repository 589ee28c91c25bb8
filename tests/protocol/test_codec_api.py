"""The codec's public face: ``ftserver.mqtt.codec`` re-exports exactly the public names of the
modules behind it (errors, decoder, encoder), and every name the project imports from it."""

from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType

from ftserver.mqtt import codec, decoder, encoder, errors

ROOT = Path(__file__).resolve().parents[2]
MODULES: tuple[ModuleType, ...] = (errors, decoder, encoder)


def test_all_is_the_whole_face_once() -> None:
    assert len(codec.__all__) == len(set(codec.__all__))
    # the names callers know: dropping one breaks some caller (see the last test)
    assert {"Decoder", "ProtocolError", "PacketTooLarge", "encode", "encode_puback"} <= set(
        codec.__all__
    )


def test_the_face_is_the_union_of_the_modules_behind_it() -> None:
    seen: set[str] = set()
    for module in MODULES:
        names = set(module.__all__)
        assert not names & seen, f"{module.__name__} exports a name another module exports"
        seen |= names
    assert seen == set(codec.__all__)


def test_every_name_resolves_to_the_object_its_module_defines() -> None:
    for module in MODULES:
        for name in module.__all__:
            value = getattr(module, name)
            assert getattr(codec, name) is value, name
            if isinstance(value, type) or callable(value):
                assert value.__module__ == module.__name__, f"{name} is defined elsewhere"


def test_star_import_gives_the_face() -> None:
    namespace: dict[str, object] = {}
    exec("from ftserver.mqtt.codec import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(codec.__all__)


def _names_imported_from_codec(path: Path) -> set[str]:
    """Names ``path`` takes from ftserver.mqtt.codec, by ``from ... import`` or as
    attributes of the module imported as a whole."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "ftserver.mqtt.codec":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "ftserver.mqtt":
            aliases |= {a.asname or a.name for a in node.names if a.name == "codec"}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "ftserver.mqtt.codec" and alias.asname:
                    aliases.add(alias.asname)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and not node.attr.startswith("__")
        ):
            names.add(node.attr)
    return names


def test_every_name_the_project_imports_is_in_the_face() -> None:
    users: dict[str, set[str]] = {}
    for top in ("ftserver", "tests", "bench"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for name in _names_imported_from_codec(path):
                users.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert users, "the scan found no user of the codec: it is looking in the wrong place"
    missing = {name: paths for name, paths in users.items() if name not in codec.__all__}
    assert not missing
