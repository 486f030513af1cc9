"""landscape: loss-landscape and ablation analysis of image classifiers, on any PyTorch model.

Importing the package is cheap and imports no torch: the public names below are resolved at first use.

    import landscape
    s = landscape.surface(model, loader, grid="-1:1:21")      # Li et al. surface of any nn.Module
    h = landscape.hessian(model, loader, top_k=3, trace=True)  # Lanczos, Hutch++, SLQ density
    p = landscape.probe(model, batch, direction)               # Santurkar's probe along a step
    c = landscape.connect(model_a, model_b, loader, align="weights")  # barriers between two models
    rec = landscape.Recorder("run.h5", model, optimizer)       # one's own training loop into a run file
"""
__version__ = "0.2.0"

PUBLIC = {
    "surface": ("landscape.engine.surface", "surface"),
    "hessian": ("landscape.engine.curvature", "hessian"),
    "probe": ("landscape.engine.probe", "probe"),
    "connect": ("landscape.connectivity.connect", "connect"),
    "measures": ("landscape.engine.measures", "measures"),
    "read_measures": ("landscape.files.measures_file", "read_measures"),
    "read_path": ("landscape.files.path_file", "read_path"),
    "Recorder": ("landscape.integrations.recorder", "Recorder"),
    "RayExecutor": ("landscape.engine.executors", "RayExecutor"),
    "LandscapeCallback": ("landscape.integrations.lightning", "LandscapeCallback"),
    "HFCallback": ("landscape.integrations.huggingface", "HFCallback"),
    "cifar10": ("landscape.training.data", "cifar10_tensors"),
    "read_run": ("landscape.files.run_file", "read_run"),
    "load_model": ("landscape.commands.sources", "load_model"),
    "read_surface": ("landscape.files.surface_file", "read_surface"),
    "read_hessian": ("landscape.files.hessian_file", "read_hessian"),
    "LandscapeError": ("landscape.errors", "LandscapeError"),
    "UsageError": ("landscape.errors", "UsageError"),
}
__all__ = sorted(PUBLIC) + ["__version__"]


def __getattr__(name: str):
    """Resolve a public name at first use (so `import landscape` stays free of torch)."""
    if name not in PUBLIC:
        raise AttributeError(f"module 'landscape' has no attribute {name!r}")
    from importlib import import_module

    module, attribute = PUBLIC[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
