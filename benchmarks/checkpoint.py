"""Checkpoint cost: save and load time of the `small` and `default` training states, and the share
of training time the default save policy costs on the `small` preset.

    python benchmarks/checkpoint.py [--repeats 5] [--train-steps 3]

A state is what the training loop saves: the model, SGD with its momentum buffers filled, the
CyclicLR state, a long history, the RNG states and the config. "save" is the whole commit
(serialise + hash while writing, fsync, rename, re-read and verify, manifest, `last.pt` link,
retention); "load" is `load_latest()` (SHA-256 check, then `torch.load(weights_only=True)`).
The policy share is (saves per epoch x save time) / epoch time, with the epoch time measured by
timing training steps of the `small` network on random batches of its patch size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ichseg.config import preset_config
from ichseg.models import build_model
from ichseg.training.checkpoint import FORMAT_VERSION, CheckpointManager, capture_rng_state
from ichseg.training.losses import DeepSupervisionLoss
from ichseg.training.optim import make_optimizer, make_scheduler


def training_state(preset: str) -> dict:
    """A checkpoint of `preset` as the loop writes it, momentum buffers included."""
    cfg = preset_config(preset)
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, cfg.training.epochs)
    for p in model.parameters():  # one step with random gradients creates every momentum buffer
        p.grad = torch.randn_like(p)
    optimizer.step()
    scheduler.step()
    epochs = 1000
    history = {name: [0.5] * epochs for name in ("train_loss", "val_loss", "val_dice", "lr",
                                                "epoch_seconds", "session")}
    return {"model_state": model.state_dict(), "epoch": epochs, "history": history,
            "best_val": 0.1, "no_improve": 0, "optimizer_state": optimizer.state_dict(),
            "scheduler_state": scheduler.state_dict(), "scaler_state": None,
            "format_version": FORMAT_VERSION, "config": cfg.to_dict(),
            "step": epochs * cfg.training.steps_per_epoch, "epoch_step": 0,
            "rng": capture_rng_state()}


def time_saves_and_loads(state: dict, repeats: int) -> tuple[float, float, int]:
    """Median save and load seconds and the file size, in a fresh folder beside the others."""
    saves, loads = [], []
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:  # the run's disk, not a tmpfs
        manager = CheckpointManager(Path(tmp) / "checkpoints", keep=3)
        for _ in range(repeats):
            start = time.perf_counter()
            path = manager.save(state)
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            manager.load_latest()
            loads.append(time.perf_counter() - start)
        size = path.stat().st_size
    return statistics.median(saves), statistics.median(loads), size


def small_epoch_seconds(steps: int) -> tuple[float, int]:
    """Seconds per training step of the `small` preset (median of `steps` after a warm-up), and
    the preset's steps per epoch."""
    cfg = preset_config("small")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = make_optimizer(model, cfg)
    loss_fn = DeepSupervisionLoss()
    shape = (cfg.training.batch_size, cfg.in_channels, *cfg.data.patch_size)
    images = torch.rand(shape)
    labels = (torch.rand((shape[0], 1, *shape[2:])) > 0.9).long()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
        optimizer.step()
        if i:  # the first step pays one-off allocation costs
            times.append(time.perf_counter() - start)
    return statistics.median(times), cfg.training.steps_per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="saves and loads per preset")
    parser.add_argument("--train-steps", type=int, default=3, help="timed steps of `small`")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"{'preset':8} {'parameters':>11} {'file MB':>8} {'save s':>8} {'load s':>8} "
          f"{'save MB/s':>10}")
    save_seconds = {}
    for preset in ("small", "default"):
        state = training_state(preset)
        params = sum(t.numel() for t in state["model_state"].values() if t.is_floating_point())
        save, load, size = time_saves_and_loads(state, args.repeats)
        save_seconds[preset] = save
        print(f"{preset:8} {params:>11,} {size / 1e6:>8.1f} {save:>8.3f} {load:>8.3f} "
              f"{size / 1e6 / save:>10.0f}")

    step, steps_per_epoch = small_epoch_seconds(args.train_steps)
    epoch = step * steps_per_epoch
    save = save_seconds["small"]
    # Default policy: `last` at each epoch's end and every 10 minutes; `best` on an improvement
    # (counted as if every epoch improved: the worst case).
    timed_saves = epoch / 600.0
    share = (1 + timed_saves) * save / epoch
    share_with_best = (2 + timed_saves) * save / epoch
    print()
    print(f"small preset: {step:.2f} s per step x {steps_per_epoch} steps = {epoch:.1f} s "
          f"per epoch")
    print(f"save policy (epoch end + every 10 min): {100 * share:.2f} % of training time; "
          f"with a best save every epoch: {100 * share_with_best:.2f} % (target < 2 %)")


if __name__ == "__main__":
    main()
