"""benchmarks/graph_profile.py: exported node names → the model part their time is booked to."""

from __future__ import annotations

import pytest

from benchmarks.graph_profile import part_of


@pytest.mark.parametrize("node, part", [
    ("/backbone/blocks.14/_project_conv/Conv", "backbone"),
    ("/mdaae/decoder/decoder.1/Conv", "mdaae"),
    ("/knn_sub/MatMul", "knn_sub"),
    ("/knn/ReduceMin", "knn"),
    # the critic's submodules, first and second call (Z, then the reconstruction)
    ("/stem/stem.0/Conv", "critic"),
    ("/down1/down1.0/Conv", "critic"),
    ("/attention_1/query/Conv", "critic"),
    # graph-level arithmetic and onnxruntime's own layout nodes
    ("/Sub_1", "other"),
    ("/Resize_1", "other"),
    ("ReorderOutput", "other"),
    ("Conv_1_output_0_nchwc", "other"),
])
def test_nodes_are_booked_to_their_part(node, part):
    assert part_of(node) == part
