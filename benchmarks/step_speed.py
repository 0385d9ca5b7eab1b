"""Training-step speed of encoder shapes on this machine: forward + backward + AdamW step, no data loading.

    python benchmarks/step_speed.py                       # the shipped 32 px shape vs 64 px through a stride-2 stem
    python benchmarks/step_speed.py --shape 48,4,1,64,2   # width, stages, blocks_per_stage, input_size, stem_stride
    python benchmarks/step_speed.py --simclr-chunks 0 256 128 64   # a SimCLR step (the ssl config) per forward_chunk

Prints milliseconds per step and images per second (batch 128, channels_last as the training core uses on
the CPU), and the parameter count, so that an architecture change can be priced before it is trained.
`--simclr-chunks` instead times one whole SimCLR step (encoder + projector + loss, both views of
`batch_size` images, the `cpu` profile's ssl config and precision) at each `forward_chunk`.
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


def simclr_rate(forward_chunk: int, steps: int) -> tuple[float, int, str]:
    """View-images per second of SimCLR steps (the `cpu` profile's ssl config) at this `forward_chunk`."""
    from illustra.config import load_config
    from illustra.ssl.pretrain import PretrainConfig, SimCLR, SimCLRTask, make_optimizer
    from illustra.train.device import autocast, cpu_bf16
    from illustra.train.loop import LoopSettings, Trainer

    config = PretrainConfig.from_dict(load_config("ssl.yaml", [f"forward_chunk={forward_chunk}"], section="ssl",
                                                  profile="cpu"))
    bf16 = cpu_bf16(config.precision_cpu)
    trainer = Trainer(LoopSettings(epochs=1, steps_per_epoch=steps + 2, cpu_channels_last=config.channels_last_cpu,
                                   cpu_bf16=bf16), progress=False)
    torch.manual_seed(0)
    model = trainer.prepare(SimCLR(config))
    optimizer = make_optimizer(model, config)
    pixels = torch.randint(0, 256, (config.batch_size * (steps + 2), 3, 64, 64), dtype=torch.uint8)
    task = SimCLRTask(pixels, config, trainer, steps + 2)
    batches = list(task.batches(0, trainer.random, trainer.device))
    timed = 0.0
    for index, batch in enumerate(batches):
        started = time.perf_counter()
        with autocast(trainer.device, bf16):  # the training core's precision rule
            loss = task.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if index >= 2:  # warm-up: allocator and oneDNN primitive caches
            timed += time.perf_counter() - started
    return 2 * config.batch_size * steps / timed, 2 * config.batch_size, "bf16" if bf16 else "float32"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", help="width,stages,blocks_per_stage,input_size,stem_stride")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--simclr-chunks", nargs="+", type=int, default=None,
                        help="instead: SimCLR steps at each of these forward_chunk values (0: the whole batch)")
    args = parser.parse_args(argv)
    if args.simclr_chunks:
        for chunk in args.simclr_chunks:
            rate, views, precision = simclr_rate(chunk, max(3, args.steps // 3))
            print(f"forward_chunk {chunk or views:>4} of {views} views ({precision}): {rate:6.0f} view-images/s",
                  flush=True)
        return 0
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
