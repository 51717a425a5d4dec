"""Typed answers, internal.

A schema (dtype, JSON Schema, pydantic model) to a Polars dtype, a strict response
format and a validator. ``OutputSchema`` is public through the package.
"""
