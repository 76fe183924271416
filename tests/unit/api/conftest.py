"""Fixtures for the API, estimate and placement unit tests (pure: no I/O besides repo files)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from ftj_testdata import FLEET, SPEC

from finetune_operator import gpus
from localcluster.fleet import node_objects


@pytest.fixture
def spec() -> dict[str, Any]:
    return copy.deepcopy(SPEC)


@pytest.fixture(scope="session")
def fleet() -> gpus.GpuInventory:
    return gpus.inventory_from_nodes(node_objects(FLEET))
