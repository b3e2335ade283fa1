"""The index stage: `cannoli index` turns a trace's chunks into the Parquet
store (cannoli_db.store) and TRACE/trace.duckdb (cannoli_db.schema)."""

from .build import IndexResult, index_trace

__all__ = ["IndexResult", "index_trace"]
