import asyncio

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fimstream import kafka, telemetry
from fimstream.events import raw_event
from fimstream.schemas.codec import Codecs
from tests.stages.helpers import consume, produce, running_stage

CONTAINERD = (b"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_0000_4000_8000_000000000001"
              b".slice/cri-containerd-" + b"ab" * 32 + b".scope")


def test_enricher_appends_container_context_and_dead_letters_garbage(settings):
    codecs = Codecs()
    exporter = InMemorySpanExporter()
    telemetry.setup("enricher", exporter)
    host_ev = raw_event("open", "/etc/hosts")
    pod_ev = raw_event("unlink", "/tmp/x", process={"cgroup": CONTAINERD})

    async def main():
        await kafka.ensure_topics(settings)
        with telemetry.tracer("test").start_as_current_span("collector.publish"):
            headers = telemetry.inject()
            trace_id = telemetry.current_trace_id()
        await produce(settings, settings.topics.raw, [codecs.raw.header + b"\x04garbage", codecs.raw.encode_batch([host_ev, pod_ev])],
                      headers=headers)
        async with running_stage("enricher", settings) as health:
            [out] = await consume(settings, settings.topics.enriched, 1)
            [dead] = await consume(settings, settings.topics.deadletter, 1)
        host, pod = codecs.enriched.decode_batch(out.value)
        assert host["event_id"] == host_ev["event_id"] and host["enrich_status"] == "host"
        assert host["container_id"] == ""
        assert pod["container_id"] == "ab" * 32 and pod["container_runtime"] == "containerd"
        assert pod["k8s"]["pod_uid"] == "1a2b3c4d-0000-4000-8000-000000000001"
        assert {k: pod[k] for k in pod_ev} == pod_ev  # raw part untouched
        assert dict(dead.headers)[kafka.H_ERROR].startswith(b"corrupt raw batch")
        assert dead.value == codecs.raw.header + b"\x04garbage"
        assert telemetry.trace_id_of(out.headers) == trace_id
        assert health.snapshot()["counters"]["dead_letters"] == 1
        spans = [s for s in exporter.get_finished_spans() if s.name == "enricher.process"]
        assert any(format(s.context.trace_id, "032x") == trace_id for s in spans)
    asyncio.run(main())
