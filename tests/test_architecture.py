"""The architecture's rules, checked on the source: no front end knows a workflow by name, files stay small."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import napari_bioflow
from napari_bioflow.engine.workflows.base import workflow_classes

SRC = Path(napari_bioflow.__file__).parent
# where workflows are declared and models registered: the only places that may name them
OWNERS = (SRC / "engine" / "workflows", SRC / "engine" / "models")


def _names() -> set[str]:
    names = set()
    for cls in workflow_classes():
        names.add(cls.name)
        if cls.variant:
            names.add(cls.variant[1])
    return names


def _string_literals(path: Path):
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.STRING:
            try:
                value = eval(tok.string)  # noqa: S307  (a literal from our own source)
            except Exception:
                continue
            yield tok.start[0], value, tok.line


def _is_field_default(path: Path, line: int) -> bool:
    """A config field's default value: the literal on the line of `Field(` or the line after it."""
    lines = path.read_text().splitlines()
    return "Field(" in lines[line - 1] or (line >= 2 and lines[line - 2].rstrip().endswith("Field("))


def test_no_code_outside_the_workflows_names_a_workflow_or_pretext():
    names = _names()
    assert {
        "semantic_segmentation",
        "image_to_image",
        "self_supervised",
        "classification",
        "crappify",
        "masking",
    } <= names
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if any(owner in path.parents for owner in OWNERS):
            continue
        for line, value, text in _string_literals(path):
            if value in names and not (path.parent.name == "config" and _is_field_default(path, line)):
                offenders.append(f"{path.relative_to(SRC)}:{line}: {text.strip()}")
    assert not offenders, "workflow names outside engine/workflows:\n" + "\n".join(offenders)


def test_the_grep_finds_a_name_where_there_is_one(tmp_path):
    """The check above can fail: a front end comparing with a workflow's name is found."""
    sample = tmp_path / "front.py"
    sample.write_text('if cfg.workflow == "classification":\n    pass\n')
    assert [v for _, v, _ in _string_literals(sample)] == ["classification"]


def test_workflow_in_the_config_is_validated_against_the_registered_ones():
    import pytest

    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.errors import InputError

    with pytest.raises(InputError, match="unknown workflow 'segmentation'; available: semantic_segmentation"):
        RunConfig.from_dict({"workflow": "segmentation"})
    with pytest.raises(InputError, match="unknown self_supervised.pretext 'inpaint' for self_supervised"):
        RunConfig.from_dict({"workflow": "self_supervised", "self_supervised": {"pretext": "inpaint"}})


def test_capability_rules_hold_whatever_the_front_end():
    """No TTA for the masked autoencoder, label filters only for 3D segmentation: refused by the config."""
    import pytest

    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.errors import InputError

    mae = {
        "workflow": "self_supervised",
        "self_supervised": {"pretext": "masking"},
        "model": {"name": "mae"},
        "data": {"patch_size": [64, 64]},
    }
    with pytest.raises(InputError, match=r"predict\.tta does not apply to 2D self-supervised, masking"):
        RunConfig.from_dict({**mae, "predict": {"tta": True}})
    with pytest.raises(InputError, match=r"predict\.z_filter does not apply to 2D semantic segmentation"):
        RunConfig.from_dict({"predict": {"z_filter": 3}})
    assert (
        RunConfig.from_dict(
            {"ndim": 3, "data": {"patch_size": [8, 64, 64]}, "predict": {"z_filter": 3}}
        ).predict.z_filter
        == 3
    )


MAX_LINES = 420  # "about 400 lines at most" (formatted): one idea per file


def test_source_files_stay_small():
    big = [
        f"{p.relative_to(SRC)}: {n}"
        for p in sorted(SRC.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    ]
    assert not big, f"files over {MAX_LINES} lines:\n" + "\n".join(big)


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """The modules on import cycles of `graph` (module -> modules it imports): what is left once every module that
    imports none of the remaining ones is taken away, again and again."""
    left = {m: set(deps) & set(graph) for m, deps in graph.items()}
    while True:
        free = [m for m, deps in left.items() if not deps & set(left)]
        if not free:
            return sorted(left)
        for m in free:
            del left[m]


def test_the_batch_package_imports_module_by_module_without_cycles_and_stays_small():
    """engine/batch: the imports between its modules, lazy ones inside functions included, form no cycle (the old
    batch <-> dask_executor one is gone); every module imports alone in a fresh interpreter; none is over 400 lines."""
    import ast
    import subprocess
    import sys

    assert _cycle({"run": {"dask"}, "dask": {"run"}, "events": set()}) == ["dask", "run"]  # the check can fail
    package = SRC / "engine" / "batch"
    modules = sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__")
    assert {"events", "task", "plan", "executors", "dask", "run", "results"} <= set(modules)
    graph, unresolved = {}, []
    for name in modules:
        deps = set()
        for node in ast.walk(ast.parse((package / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            if isinstance(node, ast.ImportFrom) and node.level and node.module:  # lazy ones run only when called
                target = [package, *package.parents][node.level - 1].joinpath(*node.module.split("."))
                if not (target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()):
                    unresolved.append(f"{name}.py:{node.lineno}: {'.' * node.level}{node.module}")
        graph[name] = deps
    assert not unresolved, "relative imports to no module:\n" + "\n".join(unresolved)
    assert not _cycle(graph), f"import cycle in engine/batch: {_cycle(graph)}"
    assert not any({"run", "dask"} & graph[m] for m in ("executors", "task", "plan", "events", "records"))
    for name in ["", *modules]:
        module = "napari_bioflow.engine.batch" + (f".{name}" if name else "")
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{module} does not import alone:\n{proc.stderr[-2000:]}"
    big = [f"{p.name}: {n}" for p in sorted(package.glob("*.py")) if (n := len(p.read_text().splitlines())) > 400]
    assert not big, "engine/batch modules over 400 lines:\n" + "\n".join(big)


ENGINE_ROOT_FILES = {"__init__.py", "errors.py", "experiment.py", "storage.py"}
ENGINE_PACKAGES = {"data", "train", "predict", "batch", "workflows", "models", "export"}


def test_engine_layout_shows_the_flow():
    """engine/ holds the shared infrastructure and one package per stage (data -> train / predict -> batch), and
    each package imports alone in a fresh interpreter: no import cycle between them."""
    import subprocess
    import sys

    engine = SRC / "engine"
    files = {p.name for p in engine.glob("*.py")}
    packages = {p.name for p in engine.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert files == ENGINE_ROOT_FILES, (
        f"engine/ root holds {sorted(files - ENGINE_ROOT_FILES)} beyond its infrastructure"
    )
    assert packages == ENGINE_PACKAGES, f"engine/ packages are {sorted(packages)}"
    for name in sorted(ENGINE_PACKAGES):
        module = f"napari_bioflow.engine.{name}"
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{module} does not import alone:\n{proc.stderr[-2000:]}"


def test_data_package_imports_no_later_stage():
    """data/ comes first: importing every data module loads neither train/ nor predict/."""
    import subprocess
    import sys

    names = sorted(p.stem for p in (SRC / "engine" / "data").glob("*.py"))
    code = (
        "import sys\n"
        + "".join(f"import napari_bioflow.engine.data.{n}\n" for n in names)
        + "print([m for m in sys.modules if m.startswith(('napari_bioflow.engine.train', "
        "'napari_bioflow.engine.predict'))])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", f"engine/data imports a later stage: {proc.stdout.strip()}"


def test_test_modules_have_unique_names():
    """pytest imports test modules by their base name (rootdir mode, no packages): two files of one name in
    tests/engine and tests/widgets stop the whole collection."""
    names = [p.name for p in Path(__file__).parent.rglob("test_*.py")]
    assert len(names) > 50
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, duplicates
