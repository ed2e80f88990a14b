"""Extract → fan-out transform → load, with a load that fails once and is retried.

The Python twin of examples/etl: the same parameters, tasks, policies and result.
Its log writes the total with thousands separators, by `humanize` from PyPI.
"""

import humanize  # from PyPI (pyproject.toml): bundled into the component by `host build`
from weir_sdk import flow, info, run_info, task, wait_all


@task(timeout="30s")
def extract(rows: int) -> list:
    """Reads `rows` rows from the source."""
    return [{"id": i, "value": (i * 7919) % 1000} for i in range(rows)]


@task(retries=2, retry_delay="10ms")
def transform(chunk: list) -> dict:
    """Cleans one chunk of rows and sums it."""
    return {"count": len(chunk), "sum": sum(row["value"] * 2 for row in chunk)}


@task(retries=3, retry_delay="50ms")
def load(summaries: list) -> int:
    """Writes the totals to the warehouse, whose connection drops on the first try."""
    if run_info().attempt == 1:
        raise ConnectionError("warehouse connection reset (simulated)")
    return sum(s["sum"] for s in summaries)


@flow
def etl(rows: int = 100, chunk_size: int = 100) -> dict:
    """Extracts `rows` rows, transforms them in parallel chunks and loads the totals."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    info(f"extracting {rows} rows")
    data = extract(rows)
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    info(f"transforming {len(chunks)} chunks of up to {chunk_size} rows")
    summaries = wait_all(transform.map(chunks))
    info(f"loading {len(summaries)} summaries")
    total = load(summaries)
    info(f"loaded: total {humanize.intcomma(total)}")
    return {"rows": rows, "chunks": len(summaries), "total": total}
