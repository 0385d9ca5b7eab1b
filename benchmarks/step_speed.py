"""Training-step speed of encoder shapes on this machine: forward + backward + AdamW step, no data loading.

    python benchmarks/step_speed.py                       # the shipped 32 px shape vs 64 px through a stride-2 stem
    python benchmarks/step_speed.py --shape 48,4,1,64,2   # width, stages, blocks_per_stage, input_size, stem_stride

Prints milliseconds per step and images per second (batch 128, channels_last as the training core uses on
the CPU), and the parameter count, so that an architecture change can be priced before it is trained.
"""

from __future__ import annotations

import argparse
import time

import torch

from illustra.ssl.encoder import Encoder, EncoderConfig

DEFAULT_SHAPES = ("32,4,1,32,1", "32,4,1,64,2")


def step_time(config: EncoderConfig, batch: int, steps: int, classes: int = 20) -> float:
    """Seconds per training step of encoder + linear head on random inputs."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(Encoder(config), torch.nn.Linear(config.feature_dim, classes))
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    images = torch.randn(batch, 3, config.input_size, config.input_size).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, classes, (batch,))

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), target).backward()
        optimizer.step()

    for _ in range(3):  # warm-up: allocator and oneDNN primitive caches
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", help="width,stages,blocks_per_stage,input_size,stem_stride")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for shape in args.shape or DEFAULT_SHAPES:
        config = EncoderConfig(*(int(v) for v in shape.split(",")))
        seconds = step_time(config, args.batch, args.steps)
        parameters = sum(p.numel() for p in Encoder(config).parameters())
        print(f"{shape:>14}: {seconds * 1000:6.0f} ms/step  {args.batch / seconds:6.0f} images/s  "
              f"{parameters / 1e6:.2f} M encoder parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
