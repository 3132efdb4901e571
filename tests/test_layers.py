"""The import rules of the code's rooms (README "Layout"): each room imports only from its own floor's room or from
lower floors, nothing imports an entry script, and no module imports itself through others."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY_SCRIPTS = ("train_ssl", "finetune", "test", "retrieve", "embed")
# room -> floor, from the ground up; a room imports from itself and from the rooms of lower floors
FLOORS = {"utils": 0, "dataset": 1, "model": 2, "engine": 3, "evaluation": 3, "process_data": 4,
          **{script: 4 for script in ENTRY_SCRIPTS}, "paper_scripts": 5, "bench": 5}


def modules() -> dict[str, Path]:
    """Every module of the code (tests excluded), by dotted name."""
    found = {}
    for path in REPO.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[0] not in FLOORS or any(part.startswith(".") for part in parts):
            continue
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules that ``path`` imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            owner = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in known), None)
            if owner is not None:
                found.add(owner)
    return found


def room(module: str) -> str:
    return module.split(".")[0]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {module: imports(path, known) - {module} for module, path in known.items()}


def test_the_rooms_and_their_floors_are_the_code():
    rooms = {room(module) for module in modules()}
    assert rooms == set(FLOORS), f"rooms without a floor or floors without code: {rooms ^ set(FLOORS)}"


def test_no_import_runs_up_a_floor_or_across_to_another_room_of_the_same_floor():
    wrong = sorted(f"{module} -> {target}" for module, targets in graph().items() for target in targets
                   if room(target) != room(module) and FLOORS[room(target)] >= FLOORS[room(module)])
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_nothing_imports_an_entry_script():
    wrong = sorted(f"{module} -> {target}" for module, targets in graph().items() for target in targets
                   if target in ENTRY_SCRIPTS)
    assert not wrong, "entry scripts imported as libraries:\n" + "\n".join(wrong)


def test_no_module_imports_itself_through_others():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target] if target in path else path + [module, target]
            if target not in state:
                circle = visit(target, path + [target])
                if circle:
                    return circle
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state:
            circle = visit(module, [module])
            assert circle is None, "a circle of imports: " + " -> ".join(circle)
