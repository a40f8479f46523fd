"""The security fileset: atomic snapshot (SIGKILL mid-write), deduplicated suggestions, 0600, writers, S3 (moto)."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from railcar.rails.scanner import Scanner
from railcar.streams.fileset import SNAPSHOT, SUGGESTIONS, FilesetError, LocalFileset, S3Fileset, open_fileset
from railcar.streams.findings import FindingsAggregator

KEY = b"fileset-key"


def _agg(texts, agent="bot"):
    s = Scanner(key=KEY)
    agg = FindingsAggregator()
    for t in texts:
        for m in s.scan_text(t, "$.content"):
            agg.add_match(m, {"agent": agent})
    agg.observe_model_path(agent, "gpt-4o", [])
    return agg


def test_commit_writes_both_files_0600_and_rerun_adds_no_duplicates(tmp_path):
    fs = open_fileset(str(tmp_path))
    agg = _agg(["AKIALALEMEL33243OLIB and jane.roe@acme.io"])
    r1 = fs.commit(agg.state("w"), agg.suggestions(), "w")
    assert r1.new_suggestions == len(agg.suggestions()) > 0
    for name in (SNAPSHOT, SUGGESTIONS):
        mode = stat.S_IMODE(os.stat(fs.dir / name).st_mode)
        assert mode == 0o600, (name, oct(mode))
    # a re-run (new process state, same data) adds nothing
    agg2 = _agg(["AKIALALEMEL33243OLIB and jane.roe@acme.io"])
    r2 = open_fileset(str(tmp_path)).commit(agg2.state("w"), agg2.suggestions(), "w")
    assert r2.new_suggestions == 0
    lines = (fs.dir / SUGGESTIONS).read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines]
    assert len(ids) == len(set(ids)) == r1.new_suggestions
    snap = fs.read_snapshot()
    assert snap["counts"]["by_kind"] == {"secret": 1, "pii": 1}
    assert snap["counts"]["occurrences"] == 2  # the re-run replaced writer w's state instead of adding to it
    assert snap["coverage"]["unguarded_agents"] == 1
    assert snap["suggestions"]["total"] == len(ids)
    assert "AKIALALEMEL33243OLIB" not in (fs.dir / SNAPSHOT).read_text()


def test_two_writers_are_merged(tmp_path):
    fs = LocalFileset(tmp_path)
    a, b = _agg(["AKIALALEMEL33243OLIB"]), _agg(["AKIALALEMEL33243OLIB", "jane.roe@acme.io"])
    fs.commit(a.state("c1"), a.suggestions(), "c1")
    snap = fs.commit(b.state("c2"), b.suggestions(), "c2").snapshot
    assert snap["counts"]["occurrences"] == 3 and set(snap["writers"]) == {"c1", "c2"}


def test_torn_suggestion_tail_is_cut(tmp_path):
    fs = LocalFileset(tmp_path)
    agg = _agg(["AKIALALEMEL33243OLIB"])
    fs.commit(agg.state("w"), agg.suggestions(), "w")
    with open(fs.dir / SUGGESTIONS, "ab") as fh:
        fh.write(b'{"id": "torn", "type": "data_saf')  # a crash mid-append, never acknowledged
    fs.commit(agg.state("w"), agg.suggestions(), "w")
    for line in (fs.dir / SUGGESTIONS).read_text().splitlines():
        json.loads(line)



def test_non_object_suggestion_line_does_not_wedge_commits(tmp_path):
    # A line that parses as JSON but is not an object (hand-edited file, another tool) used to make every later
    # commit raise AttributeError while counting suggestions by type.
    fs = LocalFileset(tmp_path)
    agg = _agg(["AKIALALEMEL33243OLIB"])
    first = fs.commit(agg.state("w"), agg.suggestions(), "w")
    with open(fs.dir / SUGGESTIONS, "ab") as fh:
        fh.write(b'[1, 2]\n5\n{"no_id": true, "type": "deep_scan"}\n')
    again = fs.commit(agg.state("w"), agg.suggestions(), "w")
    assert again.new_suggestions == 0
    by_type = again.snapshot["suggestions"]["by_type"]
    assert by_type["data_safety"] == first.snapshot["suggestions"]["by_type"]["data_safety"]
    assert by_type["deep_scan"] == first.snapshot["suggestions"]["by_type"]["deep_scan"] + 1

WRITER = r"""
import sys, itertools
from railcar.streams.fileset import LocalFileset
fs = LocalFileset(sys.argv[1])
def state(n):
    fake = [{"id": f"{n}-{i:06d}", "type": "pii", "kind": "pii", "detector": "email_address", "severity": "medium",
             "confidence": 0.9, "masked_preview": "j***@acme.io", "fingerprint": "0" * 16,
             "location": {"agent": "a", "json_path": "$" + "x" * 200}, "first_seen": "t", "last_seen": "t",
             "count": 1, "follow_up_actions": []} for i in range(n)]
    return {"findings": fake, "last_scan": {"n": n}}
for k in itertools.count():
    n = 3000 if k % 2 else 2000
    sugg = [{"id": f"s{k % 7}", "type": "deep_scan"}]
    fs.commit(state(n), sugg, "writer")
    print(n, flush=True)
"""


def test_sigkill_mid_write_leaves_old_or_new_snapshot(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    for delay in (0.15, 0.35, 0.6, 0.9):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=env)
        p.stdout.readline()  # at least one snapshot committed
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        snap = json.loads((tmp_path / "nemo-agent-security" / SNAPSHOT).read_text())  # never torn
        assert snap["counts"]["findings"] in (2000, 3000)
        assert snap["last_scan"]["n"] == snap["counts"]["findings"]
        lines = (tmp_path / "nemo-agent-security" / SUGGESTIONS).read_text().splitlines()
        ids = [json.loads(x)["id"] for x in lines if x.endswith("}")]
        assert len(ids) == len(set(ids)) <= 7


@pytest.fixture(scope="module")
def moto_s3():
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket="sec")
    yield client
    server.stop()


def test_s3_backend_dedups_and_locks(moto_s3):
    fs = open_fileset("s3://sec/team-a", s3_client=moto_s3)
    assert isinstance(fs, S3Fileset)
    agg = _agg(["AKIALALEMEL33243OLIB and jane.roe@acme.io"])
    r1 = fs.commit(agg.state("w"), agg.suggestions(), "w")
    r2 = fs.commit(agg.state("w"), agg.suggestions(), "w")
    assert r1.new_suggestions > 0 and r2.new_suggestions == 0
    assert len(fs.read_suggestions()) == r1.new_suggestions
    assert fs.read_snapshot()["counts"]["findings"] == 2
    keys = {o["Key"] for o in moto_s3.list_objects_v2(Bucket="sec")["Contents"]}
    assert "team-a/nemo-agent-security/security_snapshot.json" in keys
    assert "team-a/nemo-agent-security/.lock" not in keys  # released
    # a held lock blocks a second writer until it times out
    fs2 = S3Fileset("sec", "team-a", moto_s3, lock_timeout_s=0.3)
    with fs.lock():
        with pytest.raises(FilesetError, match="held by another writer"):
            with fs2.lock():
                pass
