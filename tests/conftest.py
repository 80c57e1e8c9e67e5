"""Shared fixtures live in tests/fixtures/ as pytest plugins, one module per real component."""

import importlib.util

pytest_plugins = [
    name
    for name in (
        "tests.fixtures.objectstore",
        "tests.fixtures.torchserve",
        "tests.fixtures.stack",
        "tests.fixtures.postgres",
        "tests.fixtures.pacs",
        "tests.fixtures.passwords",
    )
    if importlib.util.find_spec(name) is not None
]
