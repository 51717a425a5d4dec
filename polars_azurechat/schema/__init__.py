"""Typed answers, internal.

A schema (dtype, JSON Schema, pydantic model) to a Polars dtype, a strict response
format and a validator. ``OutputSchema`` is public through the package.

Modules: ``output`` (``OutputSchema``), ``strict`` (the strict response format),
``compile`` and ``keywords`` (strict schema -> dtype, validator and converter),
``dtypes`` (``pl.Struct`` -> strict schema), ``models`` (pydantic models' answers),
``values`` (format parsers, value converters), ``errors`` (``SchemaMismatchError``).
"""
