"""The engine on any `nn.Module` and any data: functional evaluation at many weight points, directions, surfaces,
Hessian-vector products and spectra, sharpness tracking, Santurkar probes, executors (torch).
"""
