"""Command-line interface of landscape (click): argument parsing only; the work is in `landscape`."""
