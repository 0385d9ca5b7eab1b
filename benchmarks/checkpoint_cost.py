"""What one resume checkpoint costs: size and write time of `Trainer._save` for a profile's SimCLR model.

    python benchmarks/checkpoint_cost.py [--profile gpu] [--repeats 3]

Builds the profile's SimCLR network (encoder + projection head) on the CPU, takes one AdamW step so the optimiser
has its moments, then writes the checkpoint `--repeats` times, without and with an EMA copy (as fine-tuning keeps).
Written after every epoch, this is what the `checkpoint_every_s` setting saves (RESULTS.md, gpu profile).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from illustra.config import load_config
from illustra.ssl.pretrain import PretrainConfig, SimCLR, make_optimizer
from illustra.train.ema import EMA
from illustra.train.loop import CHECKPOINT, LoopSettings, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = PretrainConfig.from_dict(load_config("ssl.yaml", [], section="ssl", profile=args.profile))
    with tempfile.TemporaryDirectory() as tmp:
        for ema in (False, True):
            trainer = Trainer(LoopSettings(epochs=1, steps_per_epoch=1, device="cpu"), Path(tmp), progress=False)
            model = trainer.prepare(SimCLR(config))
            optimizer = make_optimizer(model, config)
            model(torch.randn(4, 3, config.encoder.input_size, config.encoder.input_size)).sum().backward()
            optimizer.step()
            if ema:
                trainer.ema = EMA(model, 0.998)
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                trainer._save(model, optimizer, {})
                times.append(time.perf_counter() - started)
            size = (Path(tmp) / CHECKPOINT).stat().st_size / 2**20
            print(f"profile {args.profile}, EMA {'on ' if ema else 'off'}: {size:.0f} MiB, write {min(times):.2f}-"
                  f"{max(times):.2f} s over {args.repeats}")


if __name__ == "__main__":
    main()
