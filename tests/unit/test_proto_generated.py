"""The committed protocol modules are exactly what the generator produces from the .proto."""

from __future__ import annotations

import subprocess
import sys

from probenet.v1 import ingest_wire_pb2 as wire
from probenet.v1 import probenet_pb2 as pb
from support.system import ROOT


def test_generated_modules_match_the_proto(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        check=True, capture_output=True,
    )
    committed = ROOT / "proto" / "probenet" / "v1"
    generated = sorted((tmp_path / "probenet" / "v1").iterdir())
    assert [p.name for p in generated] == [
        "ingest_wire_pb2.py", "ingest_wire_pb2.pyi",
        "probenet_pb2.py", "probenet_pb2.pyi", "probenet_pb2_grpc.py", "probenet_pb2_grpc.pyi",
    ]
    stale = [p.name for p in generated
             if p.read_bytes() != (committed / p.name).read_bytes()]
    assert not stale, f"regenerate with `make proto`: {stale} differ from proto/probenet/v1"


def test_protocol_round_trips_a_batch():
    batch = pb.AgentMessage(batch=pb.ResultBatch(results=[
        pb.ProbeResult(seq=i, probe="web", success=i % 2 == 0, failed_phase=pb.PHASE_TLS,
                       phases=[pb.PhaseDuration(name="connect", seconds=0.01)])
        for i in range(1, 4)
    ]))
    back = pb.AgentMessage.FromString(batch.SerializeToString())
    assert back.WhichOneof("body") == "batch"
    assert [r.seq for r in back.batch.results] == [1, 2, 3]
    assert back.batch.results[1].failed_phase == pb.PHASE_TLS
    assert back.batch.results[0].phases[0].name == "connect"


def test_the_ingest_wire_view_reads_agent_messages_field_for_field():
    # Same field numbers, each length-delimited in both (message or bytes), same oneof.
    def fields(descriptor):
        return {f.number: (f.name, f.is_repeated, f.type in (f.TYPE_MESSAGE, f.TYPE_BYTES),
                           f.containing_oneof and f.containing_oneof.name)
                for f in descriptor.fields}

    assert fields(wire.WireAgentMessage.DESCRIPTOR) == fields(pb.AgentMessage.DESCRIPTOR)
    assert fields(wire.WireResultBatch.DESCRIPTOR) == fields(pb.ResultBatch.DESCRIPTOR)
    results = [pb.ProbeResult(seq=1, probe="web", http=pb.HttpDetails(redirects=2)),
               pb.ProbeResult(seq=2, probe="edge", kind="tcp")]
    data = pb.AgentMessage(batch=pb.ResultBatch(results=results)).SerializeToString()
    kept = wire.WireAgentMessage.FromString(data).batch.results
    assert [pb.ProbeResult.FromString(each) for each in kept] == results
