"""The one training core: every training loop of illustra (SimCLR pretraining, fine-tuning, the photo
texture view) runs through `illustra.train.loop.Trainer`.

- `device.py`: device choice (CUDA, else CPU; `--device` / ILLUSTRA_DEVICE to force), torchrun ranks,
  bf16 autocast and channels_last.
- `random.py`: seeding of everything, the per-device generator, the guard that every draw happens on
  its tensor's device.
- `schedule.py`: linear warm-up + cosine, and the time budget that shortens the horizon.
- `ema.py`: exponential moving average of the weights.
- `checkpoint.py`: pickle-free optimizer state for atomic safetensors checkpoints.
- `loop.py`: the loop itself (progress bar, TensorBoard, checkpoint/exact resume, DDP).
- `profiles.py`: device profiles (`cpu`, `gpu`) that overlay the YAML configs.

A stage brings only its model, its loss and its batches; no stage imports another stage's trainer.
"""
