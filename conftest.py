"""pytest collects the README's and the docs' code examples as tests (see tests/docs_examples.py)."""
from docs_examples import sybil  # tests/ is on pytest's pythonpath

pytest_collect_file = sybil.pytest()
