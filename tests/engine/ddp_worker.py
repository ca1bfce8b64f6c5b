"""Run by tests/test_distributed.py under torchrun (2 CPU processes, gloo): Trainer runs that must keep the ranks
in step. Prints one line per rank and scenario, `[rank R] SCENARIO key=value ...`.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/engine/ddp_worker.py CONFIG.yaml OUTPUT_DIR

cancel:      rank 1 alone cancels after its first step of epoch 2; both ranks must stop at the same batch.
uneven:      a batch of 3 split 2 + 1 (losses weighted by share), SGD: compared tensor by tensor with one process.
early_stop:  SGD with a learning rate too small to change a float32 weight, patience 1: the validation loss
             cannot improve after epoch 1, so both ranks must stop early after epoch 2, together.
"""

import sys

from napari_bioflow.config import RunConfig
from napari_bioflow.engine.train import DoneReport, StepReport, Trainer

UNEVEN = ["name=uneven", "train.batch_size=3", "train.optimizer=SGD"]


def run(name: str, cfg, cancel_on_rank=None) -> None:
    trainer = Trainer(cfg)
    steps, done = 0, None
    for r in trainer.run():
        if isinstance(r, StepReport):
            steps += 1
            if trainer.dist.rank == cancel_on_rank and (r.epoch, r.step) == (2, 1):
                trainer.cancel()
        elif isinstance(r, DoneReport):
            done = r
    print(
        f"[rank {trainer.dist.rank}] {name} reason={done.reason} epochs_run={done.epochs_run} steps={steps} "
        f"run={trainer.experiment.run_name} world={trainer.dist.world_size}",
        flush=True,
    )


def main() -> None:
    path, out = sys.argv[1], sys.argv[2]
    base = [f"output_dir={out}", "data.test_raw=null", "data.test_label=null"]
    run("cancel", RunConfig.load(path, base + ["name=cancel", "train.epochs=3"]), cancel_on_rank=1)
    run("uneven", RunConfig.load(path, base + UNEVEN))
    run(
        "early_stop",
        RunConfig.load(
            path,
            base
            + [
                "name=early",
                "train.epochs=4",
                "train.patience=1",
                "train.optimizer=SGD",
                "train.momentum=0",
                "train.learning_rate=1e-30",
            ],
        ),
    )


if __name__ == "__main__":
    main()
