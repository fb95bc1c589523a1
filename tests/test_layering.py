"""The library's rooms import downward only: the loop imports no other room, and no two rooms import each other in a circle."""

import ast
from pathlib import Path

import specdec_lib

PACKAGE = Path(specdec_lib.__file__).parent
# Bottom to top. A room may import only rooms listed before it.
LAYERS = ["loop", "drafters", "models", "prompts", "bench", "training", "viz", "serving", "testing", "exercises", "cli"]


def room_of(path: Path) -> str | None:
    """The room a file belongs to: its top-level folder or module under specdec_lib (None: the package's own __init__)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return None if parts == ("__init__",) else parts[0]


def imported_rooms(path: Path) -> set[str]:
    """Every room of the library that `path` imports, at module level or inside functions."""
    module = path.relative_to(PACKAGE).with_suffix("").parts
    package = module[:-1]  # the package a relative import starts from
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb from the file's package
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                target = list(base) + (node.module.split(".") if node.module else [])
                if not target:  # `from .. import x`: x is a room
                    target = [alias.name for alias in node.names]
            elif node.module and node.module.split(".")[0] == "specdec_lib":
                target = node.module.split(".")[1:] or [alias.name for alias in node.names]
            else:
                continue
            rooms.add(target[0])
        elif isinstance(node, ast.Import):
            rooms.update(a.name.split(".")[1] for a in node.names if a.name.startswith("specdec_lib."))
    return rooms


def room_graph() -> dict[str, set[str]]:
    """room -> the other rooms it imports. `__main__` modules are entry points nobody imports, so they don't count."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        room = room_of(path)
        if room is None or path.name == "__main__.py":
            continue
        graph.setdefault(room, set()).update(imported_rooms(path) - {room})
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of rooms, if there is one (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(room: str) -> list[str] | None:
        state[room] = 1
        stack.append(room)
        for other in sorted(graph.get(room, ())):
            if state.get(other) == 1:
                return stack[stack.index(other):] + [other]
            if other not in state and (found := visit(other)):
                return found
        state[room] = 2
        stack.pop()
        return None

    return next((found for room in sorted(graph) if room not in state and (found := visit(room))), None)


def test_every_room_is_in_the_layer_list():
    assert set(room_graph()) - {"assets"} <= set(LAYERS), "a new room: add it to LAYERS where it belongs"


def test_rooms_import_downward_only():
    graph = room_graph()
    upward = [(room, other) for room, others in graph.items() for other in others
              if other in LAYERS and LAYERS.index(other) > LAYERS.index(room)]
    assert not upward, f"rooms importing a room above them: {sorted(upward)}"
    assert graph["loop"] == set(), f"the loop imports {graph['loop']}"
    assert cycle(graph) is None, f"import cycle between rooms: {' -> '.join(cycle(graph))}"


def test_the_checks_can_fail():
    """A planted cycle and an upward import are caught; a relative import two levels up names its room."""
    assert cycle({"loop": {"drafters"}, "drafters": {"bench"}, "bench": {"loop"}}) == ["bench", "loop", "drafters", "bench"]
    assert cycle({"loop": set(), "drafters": {"loop"}}) is None
    assert imported_rooms(PACKAGE / "drafters" / "model.py") >= {"loop"}
    assert "models" in imported_rooms(PACKAGE / "cli" / "bench.py")
