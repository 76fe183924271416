"""Shared cluster fixtures (local_cluster, kubeconfig, k8s_api, kubectl, s3, namespace,
service_account_kubeconfig) from :mod:`localcluster.pytest_plugin`.

The plugin is registered once for the whole run, so integration and e2e share one cluster.
"""

from __future__ import annotations

import pytest

from localcluster import pytest_plugin


def pytest_configure(config: pytest.Config) -> None:
    pytest_plugin.register(config)
