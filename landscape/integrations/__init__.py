"""One's own training loop: the Recorder, and the PyTorch Lightning callback built on it."""
