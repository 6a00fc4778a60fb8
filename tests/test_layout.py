"""The package boundaries, read from the sources with ``ast`` (nothing is imported):

* the core (gateway/) never imports a driver or the demo: drivers are found through
  entry points, the ``demo`` command through the ``iotgw.commands`` group;
* a driver never imports a simulator (``drivers/<name>/sim.py``) at run time: a gateway
  that runs ``modbus`` devices must not load pymodbus's server side; sims are for the
  drivers' tests and the demo;
* no test module imports another test module (``test_*.py``): shared helpers live in
  tests/support/ (waiting, the MQTT test client, the servers ...) or the driver's sim.py,
  so running one test file never collects another's tests, fixtures or module state.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(source: str, module: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, also inside functions
    and ``if TYPE_CHECKING`` blocks; ``module`` (dotted) resolves relative imports."""
    package = module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield node.lineno, base
            for alias in node.names:  # `from drivers import modbus`, `from tests import test_x`
                yield node.lineno, f"{base}.{alias.name}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def is_sim(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "drivers" and len(parts) >= 3 and parts[2] == "sim"


def is_test_module(name: str) -> bool:
    """A ``test_*.py`` file (``from tests.gate_driver import test_gate_driver`` imports a
    fixture of that name, not a module)."""
    return (name.rpartition(".")[2].startswith("test_")
            and (ROOT / (name.replace(".", "/") + ".py")).is_file())


def core_violation(name: str) -> bool:
    return within(name, "drivers") or within(name, "demo")


def violations(paths: list[Path], forbidden: Callable[[str], bool]) -> list[str]:
    found = []
    for path in paths:
        module = module_name(path)
        for line, name in imported_modules(path.read_text(encoding="utf-8"), module):
            if forbidden(name):
                found.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    return sorted(set(found))


def core_files() -> list[Path]:
    return sorted((ROOT / "gateway").rglob("*.py"))


def driver_runtime_files() -> list[Path]:
    """Every module of every driver folder except its sim.py and its tests."""
    return sorted(p for p in (ROOT / "drivers").rglob("*.py")
                  if p.name != "sim.py" and "tests" not in p.relative_to(ROOT).parts)


def all_test_modules() -> list[Path]:
    return sorted([*(ROOT / "tests").rglob("test_*.py"),
                   *(ROOT / "drivers").glob("*/tests/**/test_*.py")])


# -- the scanner finds what it must (else the checks below would pass on anything) -------

@pytest.mark.parametrize(("source", "module", "expected"), [
    ("import drivers.modbus", "gateway.x", ["drivers.modbus"]),
    ("from drivers.modbus.client import X", "gateway.x",
     ["drivers.modbus.client", "drivers.modbus.client.X"]),
    ("from drivers import modbus", "gateway.x", ["drivers", "drivers.modbus"]),
    ("def f():\n    from demo import compound\n", "gateway.cli", ["demo", "demo.compound"]),
    ("from ..demo import view", "gateway.health.x", []),  # gateway.demo: not the demo
    ("from . import sim", "drivers.modbus.driver", ["drivers.modbus", "drivers.modbus.sim"]),
    ("from .sim import Device", "drivers.modbus.driver",
     ["drivers.modbus.sim", "drivers.modbus.sim.Device"]),
])
def test_scanner_resolves_imports(source: str, module: str, expected: list[str]) -> None:
    names = [name for _, name in imported_modules(source, module)]
    assert [n for n in names if core_violation(n) or is_sim(n)] == expected


def test_scanner_reports_file_and_line(tmp_path: Path) -> None:
    bad = ROOT / "gateway" / "_layout_probe_never_committed.py"
    bad.write_text("import asyncio\n\nfrom drivers.modbus import driver\n", encoding="utf-8")
    try:
        found = violations([bad], core_violation)
    finally:
        bad.unlink()
    assert found == ["gateway/_layout_probe_never_committed.py:3: imports drivers.modbus",
                     "gateway/_layout_probe_never_committed.py:3: imports "
                     "drivers.modbus.driver"]


def test_test_module_detection() -> None:
    names = [n for _, n in imported_modules(
        "from tests.test_pipeline import make_pipeline\nfrom tests.support import eventually\n"
        "from drivers.modbus.tests import test_modbus_rtu\n"
        "from tests.gate_driver import test_gate_driver\n", "tests.test_x")]
    assert [n for n in names if is_test_module(n)] == [
        "tests.test_pipeline", "drivers.modbus.tests.test_modbus_rtu"]


# -- the boundaries ------------------------------------------------------------------------

def test_core_never_imports_drivers_or_demo() -> None:
    files = core_files()
    assert len(files) > 40, "the scan found the core's modules"
    assert violations(files, core_violation) == []


def test_drivers_never_import_a_simulator_at_run_time() -> None:
    files = driver_runtime_files()
    assert any(p.name == "driver.py" for p in files)
    assert violations(files, is_sim) == []
    assert violations(files, lambda name: within(name, "demo")) == []


def test_every_driver_simulator_is_used_by_a_test() -> None:
    """A sim.py exists for the drivers' tests (and the demo), so some test uses each."""
    sims = {module_name(p) for p in (ROOT / "drivers").glob("*/sim.py")}
    assert {"drivers.modbus.sim", "drivers.dlt645.sim", "drivers.cjt188.sim",
            "drivers.serialbus.sim", "drivers.serial_line.sim", "drivers.mqtt.sim"} <= sims
    used: set[str] = set()
    for path in all_test_modules():
        used |= {n for _, n in imported_modules(path.read_text(encoding="utf-8"),
                                                module_name(path)) if n in sims}
    assert used == sims


def test_no_test_module_imports_another() -> None:
    """Nor does any helper beside them (tests/support/, conftest, harnesses)."""
    files = sorted({*(ROOT / "tests").rglob("*.py"), *(ROOT / "drivers").glob("*/tests/*.py")})
    assert len(all_test_modules()) > 50, "the scan found the test modules"
    assert violations(files, is_test_module) == []
