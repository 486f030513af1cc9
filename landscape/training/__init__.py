"""Training: `landscape run` (the runner, its loop and fused engines, data, models, optimizers, checkpoints).

Importing this package imports nothing; `config` is torch-free, the other modules import torch.
"""
