"""The experiment folder, laid out like BiaPy's, with run ids that never collide:

<output_dir>/<name>/config_files/<name>_<run>.yaml
<output_dir>/<name>/checkpoints/<name>_<run>-checkpoint-best.pth (and -last.pth)
<output_dir>/<name>/results/<name>_<run>/{charts,per_image,per_image_binarized,train_logs}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .data.io import check_writable
from .errors import InputError


@dataclass
class Experiment:
    root: Path
    name: str
    run: int

    @property
    def run_name(self) -> str:
        return f"{self.name}_{self.run}"

    @property
    def config_path(self) -> Path:
        return self.root / "config_files" / f"{self.run_name}.yaml"

    @property
    def best_checkpoint(self) -> Path:
        return self.root / "checkpoints" / f"{self.run_name}-checkpoint-best.pth"

    @property
    def last_checkpoint(self) -> Path:
        return self.root / "checkpoints" / f"{self.run_name}-checkpoint-last.pth"

    @property
    def results(self) -> Path:
        return self.root / "results" / self.run_name

    def folder(self, kind: str) -> Path:
        path = self.results / kind
        path.mkdir(parents=True, exist_ok=True)
        return path


EXPERIMENT_FOLDERS = ("results", "config_files", "checkpoints")


def folders_to_create(output_dir: Path, name: str) -> list[Path]:
    """The folders new_experiment would create for `name` under `output_dir` (parents first), so that a caller
    can take them away again when a run is refused right after its folder was claimed."""
    root = Path(output_dir).absolute() / name
    chain = [p for p in reversed(root.parents) if not p.exists()] + [root] + [root / d for d in EXPERIMENT_FOLDERS]
    return [p for p in chain if not p.exists()]


def new_experiment(output_dir: Path, name: str) -> Experiment:
    """Create the next free run of experiment `name`: a run id is claimed by creating its results folder."""
    from ..config import run_name_problem

    output_dir = Path(output_dir)
    problem = run_name_problem(name)  # the config checks it too; callers that bypass it (model_copy) are caught here
    if problem:
        raise InputError(f"No run was created in {output_dir}: {problem}.")
    check_writable(output_dir)
    root = output_dir / name
    for d in EXPERIMENT_FOLDERS:
        (root / d).mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(name)}_(\d+)")
    taken = [int(m.group(1)) for d in EXPERIMENT_FOLDERS for p in (root / d).iterdir() if (m := pattern.match(p.name))]
    run = max(taken, default=0) + 1
    while True:
        try:
            (root / "results" / f"{name}_{run}").mkdir()  # atomic: two runs started together get different ids
            return Experiment(root, name, run)
        except FileExistsError:
            run += 1
