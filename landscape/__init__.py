"""landscape: loss-landscape and ablation analysis of image classifiers.

Importing the package is cheap and imports no torch: reading runs, analysis and plots use
numpy, h5py and seaborn only. Training lives in `landscape.training.runner` and imports torch.
"""
__version__ = "0.1.0"
