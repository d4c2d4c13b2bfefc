"""Helpers the tests import (fixtures live in conftest.py)."""
