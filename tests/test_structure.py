"""One home per concept, checked on the source: method names live in the registry, metric names
in the metric catalogue, group paths in the store's schema; and the one config's defaults are
the ones `salaudit init` writes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

import salaudit
from salaudit.pipeline.spec import DEFAULT_SPEC, AuditSpec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
SOURCE = [p for folder in ("lib", "tasks", "flows") for p in sorted((ROOT / folder).rglob("*.py"))]
GROUP_PATH = re.compile(r"^(inputs|maps|decoys|boundary|attacks|metrics|stats)/")
GROUPS = {"inputs", "maps", "decoys", "boundary", "attacks", "metrics", "stats"}
STORE_CALLS = {
    "has",
    "dataset",
    "read",
    "write",
    "write_cell",
    "is_done",
    "mark_done",
    "done_regions",
    "require_array",
    "require_coordinate",
    "require_labels",
    "labels",
    "subgroups",
    "arrays",
    "group",
    "check_array",
    "shape",
    "array_attrs",
    "open_zarr",
}


def strings(tree: ast.AST, skip_register: bool = False):
    """(node, text) of every string constant and f-string part, docstrings excluded; with
    `skip_register`, none inside a `register(...)` call (a registration names what it
    registers)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            skipped.add(id(first.value))  # a docstring
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", "") == "__all__" for t in node.targets
        ):
            skipped |= {id(n) for n in ast.walk(node)}  # export lists name functions
        if skip_register and isinstance(node, ast.Call) and _registers(node):
            skipped |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skipped
        ):
            yield node, node.value


def _registers(call: ast.Call) -> bool:
    """`register(...)` or `register(...)(...)`."""
    func = call.func.func if isinstance(call.func, ast.Call) else call.func
    return _name(func) == "register"


def _name(func: ast.AST) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def offenders(found) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{node.lineno}: {text!r}" for path, node, text in found]


def test_only_the_registry_names_a_method():
    names = set(salaudit.method_names())
    home = ROOT / "lib/methods/registry.py"
    found = [
        (path, node, text)
        for path in SOURCE
        if path != home
        for node, text in strings(ast.parse(path.read_text()), skip_register=True)
        if text in names
    ]
    assert not found, "method names outside the registry:\n" + "\n".join(offenders(found))


def test_only_the_catalogue_names_a_metric():
    """Metric names live in lib/metrics (the catalogue and the modules whose families it
    lists); pydantic's error location key "loc" is not the metric Loc."""
    names = set(salaudit.variables()) | set(salaudit.families())
    home = ROOT / "lib/metrics"
    found = [
        (path, node, text)
        for path in SOURCE
        if home not in path.parents
        for node, text in strings(ast.parse(path.read_text()))
        if text in names and (path.name, text) != ("spec.py", "loc")
    ]
    assert not found, "metric names outside the catalogue:\n" + "\n".join(offenders(found))


def test_only_the_schema_spells_a_group_path():
    home = ROOT / "lib/store/schema.py"
    found = []
    for path in (p for p in SOURCE if p != home):
        tree = ast.parse(path.read_text())
        found += [(path, n, t) for n, t in strings(tree) if GROUP_PATH.match(t)]
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            if _name(call.func) in STORE_CALLS:
                args = [*call.args[:1], *(k.value for k in call.keywords if k.arg == "group")]
                found += [
                    (path, a, a.value)
                    for a in args
                    if isinstance(a, ast.Constant) and a.value in GROUPS
                ]
    assert not found, "group paths outside the schema:\n" + "\n".join(offenders(found))


def test_the_checks_above_can_fail():
    """The three scans find what they look for (so a pass means something)."""
    code = 'register("x")\nstore.read("maps")\nf"attacks/{a}"\nif name == "relex": pass\n'
    texts = [t for _, t in strings(ast.parse(code), skip_register=True)]
    assert "relex" in texts and "x" not in texts
    assert any(GROUP_PATH.match(t) for t in texts)
    calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call)]
    assert any(_name(c.func) in STORE_CALLS and c.args[0].value in GROUPS for c in calls)


def test_init_writes_exactly_the_specs_defaults():
    """`salaudit init`'s YAML parses to the model's defaults, field by field, and an empty spec
    is the same audit."""
    written = parse_spec(yaml.safe_load(DEFAULT_SPEC), "the default spec")
    assert written.model_dump() == AuditSpec().check().model_dump()
    assert load_spec(None).model_dump() == AuditSpec().model_dump()
    documented = {line.split(":")[0] for line in DEFAULT_SPEC.splitlines() if line[:1].isalpha()}
    assert documented == set(AuditSpec.model_fields) - {"limit"}  # limit is a CLI override


def test_own_methods_start_from_no_decoy_settings():
    """The default audit's decoy settings belong to its methods; a spec naming its own methods
    gets none but its own, one naming its own attacks none of the attack parameters."""
    own = parse_spec({"methods": ["dance-grad"]})
    assert own.decoys == {} and own.method("dance-grad").decoys.stride == 1
    assert AuditSpec().method("dance-grad").decoys.decoys == 32
    attacks = parse_spec({"attacks": ["pgd"]})
    assert attacks.attack_params == {} and attacks.radii is None
