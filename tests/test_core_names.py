"""The core never routes on a modality name: no registered modality's name as a string constant in a comparison,
an `in` test, a `match` case, a dict literal's key or a subscript anywhere in avctl/*.py. What a modality does
is a field of its `Modality` (modalities/base.py); the procedural world's ground-truth keys (world.py) aside."""

from __future__ import annotations

import ast
from pathlib import Path

from avctl.modalities.base import all_modalities

CORE = Path(__file__).resolve().parent.parent / "avctl"
EXEMPT_FILES = {"world.py"}  # the procedural world's ground truth is keyed "depth", "tracks", ...
# (file, name) pairs where the string is not a modality: why.
NOT_A_MODALITY = {
    ("cli.py", "depth"): "generate's --depth option (the depth map for --camera), a key of its options dict",
}


def _constants(node: ast.AST) -> list[ast.Constant]:
    """A string constant, or the string constants of a literal tuple / list / set (as in `x in ("a", "b")`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [c for elt in node.elts for c in _constants(elt)]
    return []


def name_uses(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, string, how) for every string constant used to compare, match, key or index."""
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                found += [(c.lineno, c.value, "comparison") for c in _constants(operand)]
        elif isinstance(node, ast.match_case):
            found += [(c.lineno, c.value, "match case") for c in ast.walk(node.pattern)
                      if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        elif isinstance(node, ast.Dict):
            found += [(c.lineno, c.value, "dict key") for key in node.keys if key is not None
                      for c in _constants(key)]
        elif isinstance(node, ast.Subscript):
            found += [(c.lineno, c.value, "subscript") for c in _constants(node.slice)]
    return found


def test_the_scan_finds_each_kind_of_use() -> None:
    code = ('if m == "canny": pass\nif m in ("depth", "x"): pass\nmatch m:\n    case "pose": pass\n'
            'T = {"tracks": 1}\nT["inpaint"]\nf("detail")\n')
    assert {(name, how) for _, name, how in name_uses(ast.parse(code))} == {
        ("canny", "comparison"), ("depth", "comparison"), ("x", "comparison"), ("pose", "match case"),
        ("tracks", "dict key"), ("inpaint", "subscript")}  # a plain call argument is not routing


def test_core_never_routes_on_a_modality_name() -> None:
    names = set(all_modalities())
    assert len(names) >= 13  # the built-in plugins are registered (is avctl installed?)
    offenders = []
    for path in sorted(CORE.glob("*.py")):
        if path.name in EXEMPT_FILES:
            continue
        for line, value, how in name_uses(ast.parse(path.read_text(), filename=str(path))):
            if value in names and (path.name, value) not in NOT_A_MODALITY:
                offenders.append(f"avctl/{path.name}:{line}: {value!r} in a {how}")
    assert not offenders, ("the core routes on modality names; give Modality a field instead:\n"
                           + "\n".join(offenders))
