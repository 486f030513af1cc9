"""The files: run, weights, surface and Hessian schemas, the atomic writer and the writer's lock (no torch)."""
