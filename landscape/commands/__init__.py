"""What `landscape surface` and `landscape hessian` do: models and images from run files or a user's model
definition, handed to the engine, results written to files with a lock, progress and signals."""
