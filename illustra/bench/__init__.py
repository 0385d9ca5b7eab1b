"""The public stand-in benchmark (SPEC.md) and the synthetic test fixture."""
