"""Imports run one way, as in torch.ao.nn: the integer modules import the QAT modules,
nothing under ``nn/qat`` reaches ``nn/quantized``, and the float base modules
(``hatcli.nn``) know nothing of quantization."""

from __future__ import annotations

import ast
from pathlib import Path

import hatcli

PACKAGE = Path(hatcli.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The hatcli modules ``name`` imports, anywhere in it (lazy imports too). A parent
    package that Python initialises on the way is not counted: ``from a.b import c``
    imports ``a.b.c`` if that is a module, else ``a.b``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES}


def _reachable(start: str) -> dict[str, str]:
    """Every module ``start`` reaches through imports, each with the module importing it."""
    parent: dict[str, str] = {start: ""}
    todo = [start]
    while todo:
        current = todo.pop()
        for imported in _imports(current):
            if imported not in parent:
                parent[imported] = current
                todo.append(imported)
    return parent


def _chain(parent: dict[str, str], end: str) -> str:
    chain = [end]
    while parent[chain[-1]]:
        chain.append(parent[chain[-1]])
    return " -> ".join(reversed(chain))


def _in(package: str, module: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_qat_modules_never_reach_the_integer_modules() -> None:
    qat = [m for m in MODULES if _in("hatcli.quant.nn.qat", m)]
    assert len(qat) > 5
    for module in qat:
        parent = _reachable(module)
        bad = [m for m in parent if _in("hatcli.quant.nn.quantized", m)]
        assert not bad, f"an import cycle: {_chain(parent, bad[0])}"


def test_integer_modules_import_the_qat_modules() -> None:
    assert "hatcli.quant.nn.qat" in _imports("hatcli.quant.nn.quantized.stubs")


def test_the_float_base_modules_do_not_import_quantization() -> None:
    """``hatcli.quant`` imports ``hatcli.nn`` (its swap tables), so ``hatcli.nn`` must not
    import ``hatcli.quant``; ``hatcli.nn.quantizable``, above both, is not part of it."""
    parent = _reachable("hatcli.nn")
    bad = [m for m in parent if _in("hatcli.quant", m)]
    assert not bad, f"hatcli.nn imports quantization: {_chain(parent, bad[0])}"
