"""The job's machinery, internal.

The front door every request passes, the online engine and its sender, runs, the
progress bar, and the process's event loop.
"""
