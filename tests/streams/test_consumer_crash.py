"""Crash test of the findings topic (issue 14, "How it is checked"): a real ``railcar consume`` SIGKILLed at random
points — some right after its fileset commit, while the findings records of that commit are still on their way to
a slowed broker — over a few thousand keyed trace events. Afterwards the findings topic holds every finding id of
the fileset (0 missing), the fileset holds each finding once (0 duplicates) with exact counts, a record repeated
after a crash is byte-identical under its ``(id, revision)``, and every record validates against the published
JSON Schema.

Every run is SIGKILLed, also one that made no commit within 60 s. What stalled this test: such a run was left
alive (after 20 s), a second member with the same writer state file; it kept half the partitions, and the mock
refused each newcomer's follower SyncGroup with InvalidRequestError. It made no commit because, on the mock
cluster, a restart after a SIGKILL waits 10-25 s for the dead member to leave the group; the consumers here run
with a 3 s group session (``short_session_env``, test only, see ``tests/kafka_support.py``)."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time

import aiohttp
import jsonschema
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from kafka_support import mock_cluster, read_topic, short_session_env  # noqa: F401  (fixture)

from railcar.core.exchange import Exchange
from railcar.rails.scanner import Scanner
from railcar.streams import otlp
from railcar.streams.findings import record_schema
from railcar.streams.recorder import TraceRecorder

GH = "ghp_" + "Zq8vK2mN5pR7tW1yB4cF6hJ9kL3sX0aD2eG5"  # GitHub classic token shape
N_EVENTS = 3000
RECUR_EVERY = 7
RECUR = GH[:-4] + "R0R0"  # the same key leaked again and again, in other conversations
KILLS = 7
RTT_MS = 100


def _events(n: int) -> list[tuple[bytes, bytes]]:
    rec = TraceRecorder(Scanner(key=b"s" * 32), None, otlp.make_resource(agent_id="agent-c", agent_namespace="team-c"))
    out = []
    for i in range(n):
        text = f"conversation {i}: token {GH[:-4]}{i:04d}" + (f" again {RECUR}" if i % RECUR_EVERY == 0 else "")
        ex = Exchange(body={"model": "m", "messages": [{"role": "user", "content": text}]})
        ex.response_body = orjson.dumps({"model": "m", "choices": [{"index": 0, "message": {"content": "ok"}}]})
        out.append(rec.build(ex))
    return out


async def _produce(bootstrap: str, topic: str, records) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=1 << 20)
    await p.start()
    try:
        for k, v in records:
            await p.send(topic, v, key=k)
        await p.flush()
    finally:
        await p.stop()


def _mtime(path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _kill_after_commit(proc, state_file, timeout_s: float = 60.0) -> bool:
    """SIGKILL ``proc`` the moment its writer state file changes (its fileset commit just returned; the findings
    records of that commit are in flight). False when no commit came within ``timeout_s`` (killed then too)."""
    before = _mtime(state_file)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if _mtime(state_file) != before:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)  # no commit came: still killed (a live leftover would share the writer id)
    proc.wait()
    return False


async def _ready(proc) -> None:
    async with aiohttp.ClientSession() as http:
        await proc.wait_ready(http, timeout_s=60)


def _state(state_file) -> dict:
    try:
        return orjson.loads(state_file.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}


def _crash_runs(mock_cluster, railcar_process, env, state_file, waves, rnd, t0) -> list[str]:
    """Run and SIGKILL ``railcar consume`` KILLS times, each after producing its wave: even runs the moment
    their fileset commit returned, odd ones after a random 0.5-8 s (start-up, group join, a batch, a publish,
    an offset commit). Returns what each kill hit, with the time since ``t0``."""
    kinds = []
    for k in range(KILLS):
        asyncio.run(_produce(mock_cluster.bootstrap, "spans", waves[k]))
        proc = railcar_process("consume", env, log_name=f"consume-{k}.log").proc
        if k % 2 == 0:
            kinds.append("after-commit" if _kill_after_commit(proc, state_file) else "no-commit")
        else:
            time.sleep(rnd.uniform(0.5, 8.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kinds.append("random")
        kinds[-1] += f"@{time.monotonic() - t0:.1f}s"
    return kinds


def _wait_done(last, state_file, expected: int, timeout_s: float = 120.0) -> None:
    """Until the writer state holds ``expected`` findings, an empty outbox and positions past every event
    (the last run caught up), or ``timeout_s``; ``AssertionError`` (with its log) when the run died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = _state(state_file)
        if len(st.get("findings", [])) == expected and not st.get("outbox") \
                and sum(st.get("positions", {}).values()) >= N_EVENTS:
            return
        assert last.proc.poll() is None, last.output()
        time.sleep(0.2)


def _check_fileset(fs_dir, expected: int, why) -> dict[str, dict]:
    """The fileset's findings by id, after checking: each once (0 duplicates), exact counts, suggestions once."""
    snap = json.loads((fs_dir / "security_snapshot.json").read_text())
    ids = [f["id"] for f in snap["findings"]]
    assert len(ids) == len(set(ids)) == expected, why  # 0 duplicates in the fileset
    recur = [f for f in snap["findings"] if f["count"] > 1]
    # counts are exact: re-read records below the committed positions are skipped, not counted twice
    assert [f["count"] for f in recur] == [len(range(0, N_EVENTS, RECUR_EVERY))], why
    assert recur[0]["location_count"] == recur[0]["count"] and len(recur[0]["locations"]) == 100
    sugg = [json.loads(x) for x in (fs_dir / "security_suggestions.jsonl").read_text().splitlines()]
    assert len({s["id"] for s in sugg}) == len(sugg)
    return {f["id"]: f for f in snap["findings"]}


def _check_topic(records, by_id: dict[str, dict], why) -> dict[tuple[str, int], bytes]:
    """Check the findings topic against the fileset: every id there (0 missing), every record valid against the
    schema with its revision header, a repeated ``(id, revision)`` byte-identical, the latest revision of each
    id the fileset's version, no secret. Returns the distinct ``(id, revision)`` records."""
    missing = set(by_id) - {r.key.decode() for r in records}
    assert not missing, f"{len(missing)} finding ids missing from the topic ({why})"
    validator = jsonschema.Draft202012Validator(record_schema())
    versions: dict[tuple[str, int], bytes] = {}
    for r in records:
        rec = orjson.loads(r.value)
        validator.validate(rec)
        assert dict(r.headers)["railcar.finding.revision"] == str(rec["revision"]).encode()
        prior = versions.setdefault((rec["id"], rec["revision"]), r.value)
        assert prior == r.value, "a repeated (id, revision) must carry the same record"
        assert rec["namespace"] == "team-c" and rec["agent"] == "agent-c" and rec["outcome"] == "redacted"
    # the latest revision on the topic is the fileset's version of each finding
    latest: dict[str, dict] = {}
    for (fid, rev), raw in versions.items():
        if fid not in latest or rev > latest[fid]["revision"]:
            latest[fid] = orjson.loads(raw)
    assert all(latest[i]["count"] == by_id[i]["count"] for i in by_id)
    assert GH[:-4].encode() not in b"".join(r.value for r in records)
    return versions


@pytest.mark.slow
def test_sigkilled_consumer_loses_no_finding_and_duplicates_none(mock_cluster, tmp_path, railcar_process) -> None:
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    mock_cluster.create_topic("spans", 4)
    mock_cluster.create_topic("findings", 3)
    mock_cluster.set_rtt(1, RTT_MS)  # every broker response 100 ms late: publishes stay in flight after commits
    events = _events(N_EVENTS)
    waves = [events[i::KILLS + 1] for i in range(KILLS + 1)]  # each run gets new records to commit
    env = {"RAILCAR_KAFKA_BOOTSTRAP_SERVERS": mock_cluster.bootstrap, "RAILCAR_KAFKA_TRACE_TOPIC": "spans",
           "RAILCAR_KAFKA_FINDINGS_TOPIC": "findings", "RAILCAR_KAFKA_DEAD_LETTER_TOPIC": "dlq",
           "RAILCAR_KAFKA_GROUP_ID": "crash", "RAILCAR_FILESET_ROOT": str(tmp_path / "fs"),
           "RAILCAR_TELEMETRY_AGENT_NAMESPACE": "team-c", "POD_NAME": "pod",
           **short_session_env(tmp_path)}
    fs_dir = tmp_path / "fs" / "nemo-agent-security"
    state_file = fs_dir / ".writers" / "crash-pod.json"
    t0 = time.monotonic()
    kinds = _crash_runs(mock_cluster, railcar_process, env, state_file, waves, rnd, t0)
    assert sum(x.startswith("after-commit") for x in kinds) >= 2, (seed, kinds)
    asyncio.run(_produce(mock_cluster.bootstrap, "spans", waves[-1]))
    last = railcar_process("consume", env, log_name="consume-last.log")
    asyncio.run(_ready(last))
    t_ready = time.monotonic() - t0
    expected = N_EVENTS + 1
    _wait_done(last, state_file, expected)
    t_done = time.monotonic() - t0
    assert last.stop(timeout_s=30) == 0, last.output()

    why = f"seed {seed}, kills {kinds}"
    by_id = _check_fileset(fs_dir, expected, why)
    records = asyncio.run(read_topic(mock_cluster.bootstrap, "findings", expected, timeout=60, to_end=True))
    versions = _check_topic(records, by_id, why)
    print(f"seed {seed}: {time.monotonic() - t0:.1f}s (last run ready at {t_ready:.1f}s, done at {t_done:.1f}s), "
          f"kills {kinds}; {len(records)} records for {expected} findings, "
          f"{len(versions)} (id, revision) versions")
