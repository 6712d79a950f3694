"""The declared dependencies match what the library imports, and the conda environment of
`snakemake --sdm conda` installs the same pins and finds the library from the workflow."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _declared() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>!~ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_conda_environment_lists_the_same_pins():
    env = yaml.safe_load((REPO / "envs" / "lwise.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == _declared()
    # Snakemake builds the environment from a copy under .snakemake/conda/: no relative paths.
    assert not any(p.startswith(("-e", ".", "/")) for p in pip)


def test_every_imported_distribution_is_declared():
    imported = set()
    for path in (REPO / "lwise").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"lwise", "__future__"}
    dists = importlib.metadata.packages_distributions()
    declared = {_name(r) for r in _declared()}
    missing = {
        module: dists.get(module)
        for module in third_party
        if not {_name(d) for d in dists.get(module, [module])} & declared
    }
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_scripts_import_the_library_from_the_workflow_folder(tmp_path):
    # As in a conda environment without this package installed: Snakemake puts the script's
    # folder on sys.path, and workflow/scripts/lwise is this checkout's package.
    probe = (
        "import sys; sys.path.append(sys.argv[1]); import lwise.core.keys as k; print(k.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, str(REPO / "workflow" / "scripts")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(out.strip()).resolve() == (REPO / "lwise" / "core" / "keys.py").resolve()


def test_parsing_the_workflow_imports_no_deep_learning_stack():
    """Every snakemake call (a dry run, each cluster submission) imports what rules/*.smk
    import; torch and torchvision there cost seconds per call (7 of a 12 s dry run, once)."""
    lines = sorted(
        {
            line.strip()
            for smk in (REPO / "rules").glob("*.smk")
            for line in smk.read_text().splitlines()
            if re.match(r"(from lwise[\w.]* import |import lwise)", line)
        }
    )
    assert len(lines) >= 10  # the rules' own imports were found
    heavy = ("torch", "torchvision", "timm", "sklearn")
    code = "\n".join(
        ["import sys", *lines, f"print([m for m in {heavy!r} if m in sys.modules])"]
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
