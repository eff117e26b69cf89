"""The import rules of DESIGN.md §5, enforced on every file (static) and on the API process (runtime)."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH = {"torch", "transformers", "peft", "accelerate", "safetensors.torch"}
SQL = {"sqlalchemy", "alembic", "psycopg", "psycopg2", "asyncpg", "sqlite3", "registry"}

# package -> top-level modules it must not import
FORBIDDEN = {
    "app": TORCH | {"training", "merging", "evaluation", "cli"},
    "registry": TORCH | {"app", "jobs", "training", "merging", "evaluation", "cli"},
    "adapterio": SQL | {"app", "jobs", "training", "merging", "evaluation", "cli"},
    "training": SQL | {"app", "jobs", "merging", "evaluation", "cli"},
    "merging": SQL | {"app", "jobs", "training", "evaluation", "cli"},
    "evaluation": SQL | {"app", "jobs", "training", "merging", "cli"},
    "jobs": {"app", "cli"},
}
# adapterio's torch-free part, which registry and app may use
TORCH_FREE_ADAPTERIO = {"peft_format", "safetensors_header", "adapter_check", "checkpoint"}


def imports_of(path: Path) -> set[str]:
    return imports_in(path.read_text(), package=list(path.relative_to(ROOT).parent.parts))


def imports_in(source: str, package: list[str]) -> set[str]:
    """Absolute names of every module `source` imports, relative imports resolved against `package`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} if node.module else {f"{module}.{a.name}" for a in node.names}
    return found


def test_relative_imports_are_resolved():
    source = "from ..registry import jobs\nfrom . import masks\nfrom .step import train_step\n"
    assert imports_in(source, ["training"]) == {"registry", "training.masks", "training.step"}


def violates(name: str, banned: set[str]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in banned)


def test_static_import_rules():
    problems = []
    for package, banned in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            for name in imports_of(path):
                if violates(name, banned):
                    problems.append(f"{path.relative_to(ROOT)} imports {name}")
                if package == "app" and name.startswith("jobs") and not name.startswith("jobs.specs"):
                    problems.append(f"{path.relative_to(ROOT)} imports {name} (app may use jobs.specs only)")
                if package in ("app", "registry") and name.startswith("adapterio."):
                    if name.split(".")[1] not in TORCH_FREE_ADAPTERIO:
                        problems.append(f"{path.relative_to(ROOT)} imports {name}, which needs torch")
    for module in TORCH_FREE_ADAPTERIO:
        for name in imports_of(ROOT / "adapterio" / f"{module}.py"):
            if violates(name, TORCH | {"numpy", "safetensors"}):
                problems.append(f"adapterio/{module}.py imports {name}")
    assert problems == []


def test_api_process_never_loads_torch():
    code = "import sys, app.main; app.main.create_app; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
