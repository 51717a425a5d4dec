"""Batch mode, internal.

Azure's Batch API as a sender behind the front door: JSONL chunks, uploads, polling,
and the resumable state kept in the cache file.
"""
