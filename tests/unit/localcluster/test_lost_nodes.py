"""The switch that stops one simulated node's kubelet (read by the heartbeater and the pod runner)."""

from __future__ import annotations

from pathlib import Path

from localcluster.nodes import lose_node, lost_nodes, revive_node


def test_nodes_are_lost_and_revived_one_at_a_time(tmp_path: Path) -> None:
    assert lost_nodes(tmp_path) == frozenset() and lost_nodes(None) == frozenset()
    lose_node(tmp_path, "gpu-t4-0")
    lose_node(tmp_path, "gpu-a10g-0")
    assert lost_nodes(tmp_path) == {"gpu-t4-0", "gpu-a10g-0"}
    revive_node(tmp_path, "gpu-t4-0")
    assert lost_nodes(tmp_path) == {"gpu-a10g-0"}
    revive_node(tmp_path, "gpu-a10g-0")
    assert lost_nodes(tmp_path) == frozenset()
