"""The views: analysis, figures and the report, from the files alone (numpy, h5py, matplotlib, plotly; no torch)."""
