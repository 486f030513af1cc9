"""Where training already happens: the Recorder (one's own loop), the PyTorch Lightning and HuggingFace Trainer
callbacks built on it, and what they send to experiment trackers (`tracking`). Each framework is imported only
when its callback is asked for."""

LAZY = {"Recorder": "landscape.integrations.recorder", "LandscapeCallback": "landscape.integrations.lightning",
        "HFCallback": "landscape.integrations.huggingface"}


def __getattr__(name: str):
    if name not in LAZY:
        raise AttributeError(f"module 'landscape.integrations' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(LAZY[name]), name)
