"""`lightfmp serve`: the Open Inference Protocol (KServe v2 REST) over a tiny export, checked with the official
`tritonclient.http` against `Predictor`; dynamic batching, bad requests, /metrics, SIGTERM, `profile --url`.

Most tests run the server in a thread of this process (uvicorn on a free loopback port); one runs the real
`lightfmp serve` command in a subprocess and stops it with SIGTERM while a large request is in flight."""
import asyncio
import contextlib
import http.client
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from lightfmp import pipeline
from lightfmp.cli.app import app
from lightfmp.config import RunConfig
from lightfmp.export import export_run
from lightfmp.serve.batcher import Batcher
from lightfmp.serve.load import Target, infer_request, measure
from lightfmp.serve.metrics import Metrics
from lightfmp.serve.protocol import HEADER_LENGTH
from lightfmp.serve.server import GRACE_SECONDS, ServeOptions, bind, load_model, make_server, url_of
from lightfmp.serving import Predictor
from test_export import make_csv, runner

DT = {"int64": "INT64", "float32": "FP32", "string": "BYTES"}


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    """One tiny all-fields run (categorical, numeric with gaps, multi-hot), exported with id and raw inputs. The
    records sent hold no missing values (the HTTP routes refuse them): a missing price is sent as 5.0, a missing
    tags cell as "" (no tags)."""
    root = tmp_path_factory.mktemp("serve")
    data = make_csv(root / "data.csv", n=600)
    cfg = RunConfig.of(data=str(data), label="label", multi_hot="tags:|", pretrain_epochs=1, epochs=1, embed_dim=4,
                       hidden="8", batch_size=256, subset=0.5, device="cpu", no_select=True)
    pipeline.run(cfg, root / "run", quiet=True)
    export_run(root / "run", root / "ctr")
    export_run(root / "run", root / "ctr_raw", inputs="raw")
    df = pd.read_csv(data).drop(columns="label")
    assert df["price"].isna().any() and df["tags"].isna().any()
    records = json.loads(df.fillna({"price": 5.0, "tags": ""}).to_json(orient="records"))
    return SimpleNamespace(root=root, ids=root / "ctr", raw=root / "ctr_raw", records=records,
                           schema=json.loads((root / "ctr" / "feature_schema.json").read_text()))


@contextlib.contextmanager
def running(export, grace: float | None = None, **options):
    """The app on uvicorn in a thread, on a free loopback port (`grace`: the shutdown's grace period, seconds)."""
    opts = ServeOptions(port=0, **options)
    server = make_server(load_model(export, opts), opts)
    if grace is not None:
        server.config.timeout_graceful_shutdown = grace
    sock = bind("127.0.0.1", 0)
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert th.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    url = url_of(sock)
    try:
        yield SimpleNamespace(url=url, hostport=url.removeprefix("http://"), metrics=server.config.app.state.metrics,
                              server=server, thread=th)
    finally:
        server.should_exit = True
        th.join(15)


@pytest.fixture(scope="module")
def srv(ex):
    with running(ex.ids) as s:
        yield s


def request(srv, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body bytes) of one plain HTTP request."""
    host, port = srv.hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def json_infer(feeds: dict, column: bool = False) -> dict:
    def tensor(name, v):
        v = v[:, None] if column and v.ndim == 1 else v
        dt = "BYTES" if v.dtype == object else "INT64" if v.dtype.kind == "i" else "FP32"
        return {"name": name, "datatype": dt, "shape": list(v.shape), "data": v.ravel().tolist()}
    return {"inputs": [tensor(k, v) for k, v in feeds.items()]}


def scores(srv, model: str, doc) -> np.ndarray:
    status, _, body = request(srv, "POST", f"/v2/models/{model}/infer", json.dumps(doc).encode())
    assert status == 200, body
    out = json.loads(body)["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def triton_inputs(feeds: dict, specs: list, binary: bool, column: bool = False) -> list:
    inputs = []
    for s in specs:
        v = feeds[s["name"]]
        v = v[:, None] if column and v.ndim == 1 else v
        i = triton.InferInput(s["name"], list(v.shape), DT[s["dtype"]])
        i.set_data_from_numpy(v, binary_data=binary)
        inputs.append(i)
    return inputs


# ---- the protocol, with the official client -----------------------------------------------------------------------
def test_metadata_matches_feature_schema(ex, srv):
    c = triton.InferenceServerClient(srv.hostport)
    name = ex.schema["triton_model"]
    assert name == "ctr"
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(name)
    md = c.get_model_metadata(name)
    assert md["name"] == name and md["versions"] == ["1"]
    assert [(i["name"], i["datatype"], i["shape"]) for i in md["inputs"]] == \
        [(s["name"], DT[s["dtype"]], [-1 if d == "batch" else d for d in s["shape"]]) for s in ex.schema["inputs"]]
    assert [i["name"] for i in md["inputs"]] == ["city", "dev", "price", "tags", "noise"]
    assert md["outputs"] == [{"name": "probability", "datatype": "FP32", "shape": [-1]}]
    assert c.get_server_metadata()["name"] == "lightfmp"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        c.get_model_metadata("nope")


def test_infer_matches_predictor(ex, srv):
    """Binary and JSON tensors, shape [N] and [N, 1], all within 1e-6 of Predictor; the records route too."""
    p = Predictor(ex.ids)
    recs = ex.records[:64]
    want = p.predict(recs)
    feeds = p.encode(recs)
    c = triton.InferenceServerClient(srv.hostport)
    for binary in (True, False):
        for column in (False, True):
            out = [triton.InferRequestedOutput("probability", binary_data=binary)]
            res = c.infer("ctr", triton_inputs(feeds, ex.schema["inputs"], binary, column), outputs=out)
            got = res.as_numpy("probability")
            assert got.shape == (64,) and np.abs(got - want).max() <= 1e-6
    # no outputs named: the client asks for binary output
    got = c.infer("ctr", triton_inputs(feeds, ex.schema["inputs"], True)).as_numpy("probability")
    assert np.abs(got - want).max() <= 1e-6
    # raw records, encoded by the server as Predictor does (unseen values -> OOV, extra keys ignored)
    for path in ("/v2/models/ctr/records", "/v2/models/ctr/versions/1/records"):  # the versioned form too
        status, _, body = request(srv, "POST", path, json.dumps(recs).encode())
        assert status == 200
        assert np.abs(np.asarray(json.loads(body)["outputs"][0]["data"]) - want).max() <= 1e-6
    odd = [{"city": "atlantis", "dev": 3, "price": "4.5", "tags": ["a", "zzz"], "noise": 1},
           {"city": "paris", "dev": 99, "price": -1e9, "tags": [], "noise": True}, {**recs[0], "extra": 5},
           {**recs[1], "nan": "NAN", "SURR": "SURR"}]  # extra keys are ignored whatever they hold
    text = json.dumps(odd).encode().replace(b'"NAN"', b"NaN").replace(b'"SURR"', b'"\\ud800"')
    odd = odd[:3] + [recs[1]]
    status, _, body = request(srv, "POST", "/v2/models/ctr/records", text)
    assert status == 200
    assert np.abs(np.asarray(json.loads(body)["outputs"][0]["data"]) - p.predict(odd)).max() <= 1e-6
    # zero rows is an empty answer
    status, _, body = request(srv, "POST", "/v2/models/ctr/records", b"[]")
    assert status == 200 and json.loads(body)["outputs"][0]["shape"] == [0]


def test_ids_out_of_range_read_the_oov_row(ex, srv):
    """The graph reads an id outside [0, vocab_size) as the OOV id 1; the server passes ids through unchanged."""
    feeds = Predictor(ex.ids).encode(ex.records[:3])
    sizes = {s["name"]: s["vocab_size"] for s in ex.schema["inputs"]}
    odd = {k: v.copy() for k, v in feeds.items()}
    oov = {k: v.copy() for k, v in feeds.items()}
    odd["city"][:] = [sizes["city"], 10 ** 12, -5]
    oov["city"][:] = 1
    odd["tags"][:, 0] = [-1, sizes["tags"] + 7, 2 ** 62]
    oov["tags"][:, 0] = 1
    a, b = scores(srv, "ctr", json_infer(odd)), scores(srv, "ctr", json_infer(oov))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, scores(srv, "ctr", json_infer(feeds)))


def test_raw_input_export_with_bytes_tensors(ex):
    p = Predictor(ex.raw)
    recs = ex.records[:20]
    feeds, want = p.encode(recs), p.predict(recs)
    schema = json.loads((ex.raw / "feature_schema.json").read_text())
    assert {s["dtype"] for s in schema["inputs"]} == {"string", "float32"}
    with running(ex.raw) as s:
        c = triton.InferenceServerClient(s.hostport)
        assert [i["datatype"] for i in c.get_model_metadata("ctr_raw")["inputs"]] == \
            ["BYTES", "BYTES", "FP32", "BYTES", "BYTES"]
        for binary in (True, False):
            got = c.infer("ctr_raw", triton_inputs(feeds, schema["inputs"], binary)).as_numpy("probability")
            assert np.abs(got - want).max() <= 1e-6
        # numbers in a BYTES input, or binary BYTES data with fewer values than its shape: 400, not a 500
        doc = json_infer(feeds)
        doc["inputs"][0]["data"] = list(range(1, 21))
        status, _, reply = request(s, "POST", "/v2/models/ctr_raw/infer", json.dumps(doc).encode())
        assert status == 400 and "input 'city': value 0 is 1 (int), not BYTES" in json.loads(reply)["error"], reply
        body, headers = infer_request(p.bundle.inputs, feeds, "probability")
        n = int(headers[HEADER_LENGTH])
        head = json.loads(body[:n])
        city = head["inputs"][0]
        assert city["name"] == "city" and city["shape"] == [20]
        size = city["parameters"]["binary_data_size"]
        short = b"".join(struct.pack("<I", len(t)) + t for t in (str(v).encode() for v in feeds["city"][:19]))
        city["parameters"]["binary_data_size"] = len(short)
        head = json.dumps(head).encode()
        status, _, reply = request(s, "POST", "/v2/models/ctr_raw/infer", head + short + body[n + size:],
                                   {HEADER_LENGTH: str(len(head))})
        assert status == 400 and "input 'city': 19 values, expected 20" in json.loads(reply)["error"], reply


# ---- dynamic batching -----------------------------------------------------------------------------------------------
def _concurrent(srv, docs: list) -> list:
    barrier = threading.Barrier(len(docs))
    out = [None] * len(docs)

    def go(i):
        barrier.wait()
        out[i] = scores(srv, "ctr", docs[i])
    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(docs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_dynamic_batching_gathers_concurrent_requests(ex):
    p = Predictor(ex.ids)
    parts = [ex.records[i * 10:i * 10 + n] for i, n in enumerate([3, 1, 5, 2, 3, 4])]
    docs = [json_infer(p.encode(r)) for r in parts]
    with running(ex.ids, max_batch=512, batch_wait_ms=300) as s:
        got = _concurrent(s, docs)
        assert s.metrics.calls < len(docs) and s.metrics.rows == 18
    for g, r in zip(got, parts):  # each caller gets its own rows, in order
        assert g.shape == (len(r),) and np.abs(g - p.predict(r)).max() <= 1e-6
    # --max-batch 1 turns it off: one call per request
    with running(ex.ids, max_batch=1) as s:
        got = _concurrent(s, docs)
        assert s.metrics.calls == len(docs)
    assert np.abs(np.concatenate(got) - p.predict(sum(parts, []))).max() <= 1e-6


def _batches(max_batch: int, wait_ms: float, sizes: list, in_flight=None, told: list | None = None):
    """Requests of `sizes` rows given to a Batcher at once: (each caller's answer, rows per model call). `told`:
    a list that gets the (rows, requests) the batcher reports for each call (what the metrics count)."""
    calls = []
    on_call = None if told is None else lambda rows, requests: told.append((rows, requests))

    def run(feeds):
        calls.append(len(feeds["x"]))
        return feeds["x"] * 2.0

    async def go():
        b = Batcher(run, max_batch, wait_ms, in_flight=in_flight, on_call=on_call)
        await b.start()
        start = 0
        reqs = []
        for n in sizes:
            reqs.append(b.score({"x": np.arange(start, start + n, dtype=np.float32)}, n))
            start += n
        out = await asyncio.gather(*reqs)
        await b.stop()
        return out
    return asyncio.run(go()), calls


def test_batcher_groups_up_to_max_batch_and_answers_in_order():
    out, calls = _batches(7, 200, [3, 3, 3, 3, 9, 1])
    assert calls == [6, 6, 9, 1]  # a request that would pass 7 rows waits for the next call; 9 rows go alone
    assert np.array_equal(np.concatenate(out), np.arange(22) * 2.0)
    assert [len(o) for o in out] == [3, 3, 3, 3, 9, 1]
    told = []
    assert _batches(512, 200, [2, 5, 1], told=told)[1] == [8]
    assert told == [(8, 3)]  # the metrics hear of one call of 8 rows from 3 requests
    assert _batches(7, 200, [3, 4])[1] == [7]  # exactly max_batch rows is one call
    assert _batches(1, 200, [2, 5, 1])[1] == [2, 5, 1]      # --max-batch 1: off
    assert _batches(512, 0, [2, 5, 1])[1] == [2, 5, 1]      # --batch-wait-ms 0: off
    # nothing else on its way: a lone request does not sit out the wait
    t0 = time.perf_counter()
    assert _batches(512, 5000, [4], in_flight=lambda: 1)[1] == [4]
    assert time.perf_counter() - t0 < 2
    t0 = time.perf_counter()
    assert _batches(512, 300, [4], in_flight=lambda: 2)[1] == [4]  # one more announced: wait for it
    assert time.perf_counter() - t0 >= 0.3
    # a full batch runs at once, whatever else may be coming
    t0 = time.perf_counter()
    assert _batches(4, 10_000, [4])[1] == [4]
    assert time.perf_counter() - t0 < 5


def test_the_batch_window_runs_from_its_first_request():
    """--batch-wait-ms counts from the batch's first request, not from the latest one: requests arriving one after
    another do not hold a batch open past its window."""
    calls = []

    def run(feeds):
        calls.append(len(feeds["x"]))
        return feeds["x"] * 2.0

    async def go():
        loop = asyncio.get_running_loop()
        sent = [0]
        # the requests still to be sent count as on their way, so the batcher waits for them
        b = Batcher(run, 512, 1200, in_flight=lambda: b.held + 3 - sent[0])
        await b.start()
        t0, reqs = loop.time(), []
        for i, at in enumerate((0.0, 0.8, 1.6)):  # the window closes at 1.2 s; from the second request, 2.0 s
            await asyncio.sleep(max(0.0, t0 + at - loop.time()))
            sent[0] += 1
            reqs.append(asyncio.ensure_future(b.score({"x": np.full(1, float(i), np.float32)}, 1)))
        out = await asyncio.wait_for(asyncio.gather(*reqs), 10)
        await b.stop()
        return out
    out = asyncio.run(go())
    assert calls == [2, 1]
    assert [o.tolist() for o in out] == [[0.0], [2.0], [4.0]]


def test_a_request_abandoned_in_the_queue_takes_no_room_in_the_batch():
    """A request whose caller gave up while it waited behind a running call is left out of the next batch, also
    where it is not that batch's first request: its rows are never given to the model."""
    calls, gate = [], threading.Event()

    def run(feeds):
        calls.append(len(feeds["x"]))
        if len(calls) == 1:
            gate.wait(20)  # the first call runs until both requests below are queued
        return feeds["x"] * 2.0

    async def go():
        b = Batcher(run, 512, 50)
        await b.start()
        busy = asyncio.ensure_future(b.score({"x": np.zeros(1, np.float32)}, 1))
        while not calls:
            await asyncio.sleep(0.01)
        kept = asyncio.ensure_future(b.score({"x": np.ones(3, np.float32)}, 3))
        gone = asyncio.ensure_future(b.score({"x": np.ones(7, np.float32)}, 7))
        await asyncio.sleep(0)  # both are in the queue
        gone.cancel()
        gate.set()
        out = await asyncio.wait_for(asyncio.gather(busy, kept), 10)
        await b.stop()
        return out
    out = asyncio.run(go())
    assert calls == [1, 3]
    assert out[1].tolist() == [2.0, 2.0, 2.0]


def test_a_model_fault_fails_only_the_request_at_fault():
    """When a batched model call raises, its requests are scored one by one: the request whose rows the model
    refuses gets the error, the others in the same batch get their scores."""
    calls = []

    def run(feeds):
        calls.append(len(feeds["x"]))
        if (feeds["x"] < 0).any():
            raise ValueError("negative rows")
        return feeds["x"] * 2.0

    async def go():
        b = Batcher(run, 512, 100)
        await b.start()
        reqs = [b.score({"x": np.full(n, v, np.float32)}, n) for n, v in ((3, 1.0), (2, -1.0), (1, 4.0))]
        out = await asyncio.wait_for(asyncio.gather(*reqs, return_exceptions=True), 10)
        await b.stop()
        return out
    good, bad, last = asyncio.run(go())
    assert calls == [6, 3, 2, 1]  # the batch, then each request alone
    assert good.tolist() == [2.0, 2.0, 2.0] and last.tolist() == [8.0]
    assert isinstance(bad, ValueError) and str(bad) == "negative rows"


def test_without_batching_calls_run_side_by_side():
    """--max-batch 1 turns batching off: each request is its own call on a pool of threads, so calls overlap
    instead of queueing behind one another."""
    both = threading.Barrier(2, timeout=10)

    def run(feeds):
        both.wait()  # returns only once two calls are in the model at the same time
        return feeds["x"] * 2.0

    async def go():
        b = Batcher(run, 1, 200, workers=2)
        assert not b.batching
        await b.start()
        out = await asyncio.wait_for(asyncio.gather(*(b.score({"x": np.full(1, float(i), np.float32)}, 1)
                                                      for i in range(2))), 20)
        await b.stop()
        return out
    assert [o.tolist() for o in asyncio.run(go())] == [[0.0], [2.0]]


def test_stopping_the_batcher_answers_every_request_it_was_given():
    """`stop()` scores what callers are still waiting for, a batch already gathered but not yet scored too (it waited
    for the queue alone, and a gathered batch's callers never got an answer)."""
    async def go():
        b = Batcher(lambda feeds: feeds["x"] * 2.0, 512, 50)
        await b.start()
        reqs = [asyncio.ensure_future(b.score({"x": np.full(2, float(i), np.float32)}, 2)) for i in range(3)]
        await asyncio.sleep(0)  # the worker has taken them off the queue and waits for more
        await asyncio.wait_for(b.stop(), 5)
        return await asyncio.wait_for(asyncio.gather(*reqs), 5)
    out = asyncio.run(go())
    assert [o.tolist() for o in out] == [[0.0, 0.0], [2.0, 2.0], [4.0, 4.0]]


# ---- bad requests -------------------------------------------------------------------------------------------------
def _bad_cases(ex):
    p = Predictor(ex.ids)
    good = json_infer(p.encode(ex.records[:4]))

    def edit(fn):
        d = json.loads(json.dumps(good))
        fn(d)
        return json.dumps(d).encode()

    def nth(d, name):
        return next(t for t in d["inputs"] if t["name"] == name)

    def transposed(t):  # an [N, W] input's values nested W x N: the right count, in the wrong rows
        n, w = t["shape"]
        flat = np.asarray(t["data"]).reshape(-1).tolist()
        assert n != w
        return [flat[j::w] for j in range(w)]

    infer = "/v2/models/ctr/infer"
    rec = dict(ex.records[0])
    return [
        ("missing input", infer, edit(lambda d: d["inputs"].pop(2)), 400, "'price'"),
        ("extra input", infer, edit(lambda d: d["inputs"].append({**nth(d, "city"), "name": "bogus"})), 400, "'bogus'"),
        ("twice", infer, edit(lambda d: d["inputs"].append(nth(d, "city"))), 400, "'city' is given twice"),
        ("datatype", infer, edit(lambda d: nth(d, "city").update(datatype="FP32")), 400, "'city': datatype"),
        ("shape", infer, edit(lambda d: nth(d, "dev").update(shape=[2, 2])), 400, "'dev': shape [2, 2]"),
        ("multi-hot width", infer, edit(lambda d: nth(d, "tags").update(shape=[6, 2])), 400, "'tags': shape"),
        ("rows differ", infer, edit(lambda d: nth(d, "noise").update(shape=[3], data=[2, 2, 2])), 400,
         "'noise' has 3 rows"),
        ("count", infer, edit(lambda d: nth(d, "price").update(data=[1.0])), 400, "'price': 1 values, expected 4"),
        ("text as id", infer, edit(lambda d: nth(d, "city")["data"].__setitem__(0, "paris")), 400,
         "'city': value 0 is 'paris'"),
        ("float as id", infer, edit(lambda d: nth(d, "city")["data"].__setitem__(1, 2.5)), 400,
         "'city': value 1 is 2.5"),
        ("int64 range", infer, edit(lambda d: nth(d, "city")["data"].__setitem__(0, 2 ** 70)), 400,
         "'city': value 0 is 1180591620717411303424, outside the INT64 range"),
        ("NaN id", infer, edit(lambda d: nth(d, "dev")["data"].__setitem__(0, "NAN")).replace(b'"NAN"', b"NaN"),
         400, "'dev': value 0 is nan (a float), not INT64"),
        ("ragged rows", infer, edit(lambda d: nth(d, "price").update(data=[[1.0, 2.0], [], [3.0, 4.0]])), 400,
         "'price': 'data' has rows of different lengths (0, 2)"),
        ("nested deeper than the shape", infer, edit(lambda d: nth(d, "price").update(data=[[1.0], [2.0], [3.0], [4.0]])),
         400, "'price': 'data' is nested as [4, 1], but its shape is [4]"),
        ("nested transposed", infer, edit(lambda d: nth(d, "tags").update(data=transposed(nth(d, "tags")))), 400,
         "'tags': 'data' is nested as"),
        ("NaN numeric", infer, edit(lambda d: nth(d, "price")["data"].__setitem__(3, "NAN")).replace(b'"NAN"', b"NaN"),
         400, "input 'price': row 3 is NaN"),
        ("not JSON", infer, b"{inputs: nope", 400, "not valid JSON"),
        ("binary output as text", infer, edit(lambda d: d.update(parameters={"binary_data_output": "yes"})), 400,
         "parameters.binary_data_output must be true or false, got 'yes'"),
        ("not an object", infer, b"[1, 2]", 400, "'inputs'"),
        ("binary header", infer, b'{"inputs": []}', 400, "Inference-Header-Content-Length"),
        ("binary without its header", infer,
         b'{"inputs":[{"name":"price","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":4}}]}\xff\xff\x00\x00',
         400, "send the JSON part's length in the Inference-Header-Content-Length header"),
        ("unknown model", "/v2/models/nope/infer", json.dumps(good).encode(), 404, "unknown model 'nope'"),
        ("unknown version", "/v2/models/ctr/versions/7/infer", json.dumps(good).encode(), 404, "no version '7'"),
        ("records, unknown version", "/v2/models/ctr/versions/7/records", json.dumps([rec]).encode(), 404,
         "no version '7'"),
        ("records: field missing", "/v2/models/ctr/records",
         json.dumps([{k: v for k, v in rec.items() if k != "price"}]).encode(), 400, "'price'"),
        ("records: null", "/v2/models/ctr/records", json.dumps([rec, {**rec, "city": None}]).encode(), 400,
         "record 1, field 'city' is null"),
        ("records: absent from one", "/v2/models/ctr/records",
         json.dumps([rec, {k: v for k, v in rec.items() if k != "price"}]).encode(), 400,
         "record 1, field 'price' is absent"),
        ("records: NaN", "/v2/models/ctr/records",
         json.dumps([{**rec, "price": "NAN"}]).encode().replace(b'"NAN"', b"NaN"), 400,
         "field 'price': NaN is not a finite number (NaN and Infinity are not JSON)"),
        ("records: endless integer", "/v2/models/ctr/records",
         json.dumps([{**rec, "price": "LONG"}]).encode().replace(b'"LONG"', b"1" * 5000), 400,
         "number literal too long to read"),
        ("records: overflowing number", "/v2/models/ctr/records",
         json.dumps([rec, {**rec, "price": "BIG"}]).encode().replace(b'"BIG"', b"1e400"), 400,
         "record 1, field 'price': 1e400 is not a finite number (beyond a 64-bit float's range)"),
        ("records: wrong type", "/v2/models/ctr/records", json.dumps([rec, {**rec, "price": "cheap"}]).encode(),
         400, "record 1, field 'price' is numeric but got 'cheap'"),
        ("records: a list for a category", "/v2/models/ctr/records",
         json.dumps([rec, rec, {**rec, "city": ["a", "b"]}]).encode(), 400, "record 2, field 'city' (categorical) got"),
        ("records: R's NA", "/v2/models/ctr/records", json.dumps([{**rec, "price": "NA"}]).encode(), 400,
         "field 'price' is 'NA', which reads as a missing number"),
        ("records: not a list", "/v2/models/ctr/records", json.dumps(rec).encode(), 400, "JSON list of objects"),
        ("records: not an object", "/v2/models/ctr/records", b"[1]", 400, "record 0 is a JSON number"),
        ("records: lone surrogate", "/v2/models/ctr/records",
         json.dumps([{**rec, "city": "SURR"}]).encode().replace(b"SURR", b"\\ud800"), 400,
         "record 0, field 'city': a text value is not valid Unicode"),
        ("lone surrogate id", infer, edit(lambda d: d.update(id="SURR")).replace(b"SURR", b"\\ud800"), 400,
         "'id' is not valid Unicode"),
        ("parameters not an object", infer, edit(lambda d: d.update(parameters=[])), 400,
         "'parameters' must be an object, got []"),
        ("output parameters not an object", infer,
         edit(lambda d: d.update(outputs=[{"name": "probability", "parameters": "x"}])), 400,
         "output 'probability': 'parameters' must be an object"),
        ("unknown output", infer, edit(lambda d: d.update(outputs=[{"name": "bogus"}])), 400,
         "output 'bogus' is not an output of the model (outputs: probability)"),
        ("id not text", infer, edit(lambda d: d.update(id=5)), 400, "'id' must be a string, got int"),
        ("true as id", infer, edit(lambda d: nth(d, "city")["data"].__setitem__(0, True)), 400,
         "'city': value 0 is True (bool), not INT64"),
        ("true as number", infer, edit(lambda d: nth(d, "price")["data"].__setitem__(0, True)), 400,
         "'price': value 0 is True (bool), not FP32"),
        ("shape of booleans", infer, edit(lambda d: nth(d, "city").update(shape=[True])), 400,
         "'city': shape [True] must be a list of non-negative integers"),
        ("records: a later one not an object", "/v2/models/ctr/records", json.dumps([rec, 5]).encode(), 400,
         "record 1 is a JSON number, not an object"),
        ("records: NaN in a list", "/v2/models/ctr/records",
         json.dumps([rec, {**rec, "tags": ["a", "NAN"]}]).encode().replace(b'"NAN"', b"NaN"), 400,
         "record 1, field 'tags': NaN is not a finite number (NaN and Infinity are not JSON)"),
    ], good


def test_bad_requests_get_one_line_4xx_and_the_server_goes_on(ex, srv):
    cases, good = _bad_cases(ex)
    want = scores(srv, "ctr", good)
    for what, path, body, status, text in cases:
        headers = {"Inference-Header-Content-Length": "999"} if what == "binary header" else {}
        got, hdrs, reply = request(srv, "POST", path, body, headers)
        assert got == status, (what, reply)
        assert hdrs["content-type"] == "application/json"
        err = json.loads(reply)
        assert set(err) == {"error"} and "\n" not in err["error"] and text in err["error"], (what, err)
        assert np.array_equal(scores(srv, "ctr", good), want), what  # the next good request succeeds
    for method, path, status in (("GET", "/v2/models/ctr/infer", 405), ("GET", "/v3/nothing", 404),
                                 ("POST", "/v2/models/ctr/infer/", 404), ("GET", "/metrics/", 404)):
        got, _, reply = request(srv, method, path)
        assert got == status and "error" in json.loads(reply)
    for path in ("/v2/models/ctr/infer", "/v2/models/ctr/records"):
        got, _, reply = request(srv, "POST", path, b"[]", {"Content-Encoding": "gzip"})
        assert got == 415 and "Content-Encoding" in json.loads(reply)["error"], path
    for coding in ("Identity", " identity", ""):  # codings are case-insensitive (RFC 9110); empty is none
        got, _, reply = request(srv, "POST", "/v2/models/ctr/records", b"[]", {"Content-Encoding": coding})
        assert got == 200, (coding, reply)
    assert srv.metrics.errors()["infer"] >= 15


def test_a_binary_body_is_read_to_its_last_byte(ex, srv):
    """Binary tensor data is exactly what the inputs' binary_data_size add up to: bytes left over after the last
    input, or an input with both 'data' and binary data, are refused (400), not guessed at."""
    p = Predictor(ex.ids)
    body, headers = infer_request(p.bundle.inputs, p.encode(ex.records[:3]), "probability")
    status, _, reply = request(srv, "POST", "/v2/models/ctr/infer", body, headers)
    assert status == 200, reply
    status, _, reply = request(srv, "POST", "/v2/models/ctr/infer", body + b"\0" * 8, headers)
    assert status == 400 and "8 bytes of binary data after the last input" in json.loads(reply)["error"], reply
    n = int(headers[HEADER_LENGTH])
    head = json.loads(body[:n])
    assert head["inputs"][0]["name"] == "city"
    head["inputs"][0]["data"] = [1, 2, 3]
    head = json.dumps(head).encode()
    status, _, reply = request(srv, "POST", "/v2/models/ctr/infer", head + body[n:], {HEADER_LENGTH: str(len(head))})
    assert status == 400 and "input 'city' has both 'data' and binary_data_size" in json.loads(reply)["error"], reply


def test_the_response_echoes_the_id_and_is_binary_when_asked(ex, srv):
    """An `id` in the request comes back in the response. Binary output, asked for the whole response
    (parameters.binary_data_output) or for the output (outputs[].parameters.binary_data, which has the last word),
    is the JSON header followed by the float32 scores, labelled application/octet-stream."""
    p = Predictor(ex.ids)
    recs = ex.records[:5]
    want = p.predict(recs)
    good = json_infer(p.encode(recs))
    path = "/v2/models/ctr/infer"
    status, hdrs, reply = request(srv, "POST", path, json.dumps({**good, "id": "req-7"}).encode())
    assert status == 200 and hdrs["content-type"] == "application/json" and json.loads(reply)["id"] == "req-7"
    per_output = {"outputs": [{"name": "probability", "parameters": {"binary_data": True}}]}
    for extra in ({"parameters": {"binary_data_output": True}}, per_output):
        doc = json.dumps({**good, **extra, "id": "req-8"}).encode()
        # no binary inputs: the header may say the JSON part is the whole body
        for headers in ({}, {HEADER_LENGTH: str(len(doc))}):
            status, hdrs, reply = request(srv, "POST", path, doc, headers)
            assert status == 200, (extra, headers, reply)
            assert hdrs["content-type"] == "application/octet-stream", (extra, hdrs)
            n = int(hdrs[HEADER_LENGTH])
            head = json.loads(reply[:n])
            assert head["id"] == "req-8" and head["outputs"][0]["parameters"] == {"binary_data_size": 20}
            assert len(reply) == n + 20 and np.abs(np.frombuffer(reply[n:], "<f4") - want).max() <= 1e-6
    off = {"parameters": {"binary_data_output": True},
           "outputs": [{"name": "probability", "parameters": {"binary_data": False}}]}
    status, hdrs, reply = request(srv, "POST", path, json.dumps({**good, **off}).encode())
    assert status == 200 and hdrs["content-type"] == "application/json" and HEADER_LENGTH not in hdrs
    assert np.abs(np.asarray(json.loads(reply)["outputs"][0]["data"]) - want).max() <= 1e-6


def test_a_fault_of_the_model_is_a_500_and_the_server_goes_on(ex, srv, monkeypatch):
    """A model call that raises is the server's fault, not the client's: 500 with the error's type and first line,
    counted as a 500; the next request is scored as usual."""
    model = srv.server.config.app.state.model
    good = json_infer(Predictor(ex.ids).encode(ex.records[:3]))
    want = scores(srv, "ctr", good)

    def broken(feeds):
        raise RuntimeError("the model broke\nsecond line")
    monkeypatch.setattr(model.predictor, "run", broken)
    before = srv.metrics.requests.get(("infer", 500), 0)
    status, hdrs, reply = request(srv, "POST", "/v2/models/ctr/infer", json.dumps(good).encode())
    assert status == 500 and hdrs["content-type"] == "application/json", reply
    assert json.loads(reply) == {"error": "internal error: RuntimeError: the model broke"}
    assert srv.metrics.requests[("infer", 500)] == before + 1
    monkeypatch.undo()
    assert np.array_equal(scores(srv, "ctr", good), want)


def test_the_batcher_knows_of_the_request_being_scored(ex, srv, monkeypatch):
    """While a request is scored the batcher counts it among the requests on their way (what lets it close a
    batch early once every such request is in it), on both routes."""
    model = srv.server.config.app.state.model
    real, seen = model.predictor.run, []

    def run(feeds):
        seen.append(model.batcher.in_flight())
        return real(feeds)
    monkeypatch.setattr(model.predictor, "run", run)
    recs = ex.records[:3]
    scores(srv, "ctr", json_infer(Predictor(ex.ids).encode(recs)))
    status, _, reply = request(srv, "POST", "/v2/models/ctr/records", json.dumps(recs).encode())
    assert status == 200, reply
    assert seen == [1, 1]


def test_serve_options_reach_the_model_and_the_server(ex):
    """--max-batch and --batch-wait-ms reach the model's batcher; --max-body-mb counts MiB (16 is 16,777,216 bytes,
    as docs/serving.md says); a stop waits up to 30 s for the requests in flight."""
    assert ServeOptions().max_body_bytes == 16_777_216
    opts = ServeOptions(max_batch=7, batch_wait_ms=300)
    model = load_model(ex.ids, opts)
    assert (model.max_batch, model.wait_ms) == (7, 300)
    assert make_server(model, opts).config.timeout_graceful_shutdown == GRACE_SECONDS == 30


def test_an_error_quotes_at_most_a_clip_of_what_the_client_sent(ex, srv):
    """A datatype, shape or binary size of a million characters came back whole in the 400's message."""
    good = json_infer(Predictor(ex.ids).encode(ex.records[:4]))
    huge = "X" * 1_000_000

    def with_city(**change):
        d = json.loads(json.dumps(good))
        next(t for t in d["inputs"] if t["name"] == "city").update(change)
        return json.dumps(d).encode()
    for what, body in (("datatype", with_city(datatype=huge)), ("shape", with_city(shape=[1] * 300_000)),
                       ("shape type", with_city(shape=["a"] * 300_000)),
                       ("binary size", with_city(parameters={"binary_data_size": huge})),
                       ("nested", with_city(data=[[1] * 4] * 100_000, shape=[4]))):
        got, _, reply = request(srv, "POST", "/v2/models/ctr/infer", body)
        assert got == 400 and len(reply) < 400, (what, reply[:200])


def test_nan_in_a_numeric_input_is_refused_naming_input_and_row(ex, srv):
    """NaN in an FP32 input, as JSON (`NaN` token) or binary data: 400 naming the input and row; Infinity is a
    number (the last bucket, as Predictor reads it); the next good request succeeds."""
    p = Predictor(ex.ids)
    recs = ex.records[:8]
    feeds, want = p.encode(recs), p.predict(recs)
    bad = {k: v.copy() for k, v in feeds.items()}
    bad["price"][[2, 5]] = np.nan
    c = triton.InferenceServerClient(srv.hostport)
    for binary in (True, False):
        with pytest.raises(InferenceServerException, match=r"input 'price': row 2 is NaN \(and 1 more NaN\)") as e:
            c.infer("ctr", triton_inputs(bad, ex.schema["inputs"], binary))
        assert e.value.status() == "400"
        got = c.infer("ctr", triton_inputs(feeds, ex.schema["inputs"], binary)).as_numpy("probability")
        assert np.abs(got - want).max() <= 1e-6
    # the Predictor in Python still reads NaN as a missing value
    assert np.isfinite(p.predict([{**recs[0], "price": float("nan")}])).all()
    # the load client (`profile --url`) sends drawn NaN as 0.0, so its requests are accepted
    body, headers = infer_request(p.bundle.inputs, bad, "probability")
    status, _, reply = request(srv, "POST", "/v2/models/ctr/infer", body, headers)
    assert status == 200 and bad["price"][2] != bad["price"][2], reply
    big = {k: v.copy() for k, v in feeds.items()}
    big["price"][0] = np.inf
    got = c.infer("ctr", triton_inputs(big, ex.schema["inputs"], False)).as_numpy("probability")
    assert np.abs(got - p.predict([{**recs[0], "price": float("inf")}, *recs[1:]])).max() <= 1e-6


@pytest.mark.parametrize("length", ["+14", "1_4", "0x0e", "\u0661\u0664", "14.0", " 14 ", "14"])
def test_the_binary_header_length_is_a_decimal_number(length):
    """Inference-Header-Content-Length is read as Content-Length is: decimal digits (surrounding spaces aside), not
    whatever Python's int() takes ('+14', '1_4', Arabic-Indic digits)."""
    from lightfmp.serve.protocol import RequestError, _split
    body = b'{"inputs": []}' + b"\x00" * 8
    if length.strip() == "14":
        assert _split(body, length) == (body[:14], body[14:])
    else:
        with pytest.raises(RequestError, match="Inference-Header-Content-Length .* must be a length within the body"):
            _split(body, length)


@pytest.mark.parametrize("sign", ["", "-"])
def test_an_integer_literal_beyond_a_float_in_a_numeric_input_is_infinite(ex, srv, sign):
    """JSON allows an integer of any length: one beyond a float's range (2**1024 and more) in an FP32 input is
    infinity, as 1e400 is (before: a 500, from converting it to a float to take its sign)."""
    p = Predictor(ex.ids)
    recs = ex.records[:2]
    feeds = p.encode(recs)
    inputs = [{"name": n, "datatype": "FP32" if v.dtype == np.float32 else "INT64", "shape": list(v.shape),
               "data": v.flatten().tolist()} for n, v in feeds.items()]
    price = next(t for t in inputs if t["name"] == "price")
    price["data"][0] = "BIG"
    body = json.dumps({"inputs": inputs}).encode().replace(b'"BIG"', f"{sign}1{'0' * 400}".encode())
    status, _, reply = request(srv, "POST", "/v2/models/ctr/infer", body)
    assert status == 200, reply
    got = np.array(json.loads(reply)["outputs"][0]["data"], dtype=np.float32)
    want = p.predict([{**recs[0], "price": float(f"{sign}inf")}, recs[1]])
    assert np.abs(got - want).max() <= 1e-6


def test_records_with_a_missing_value_are_refused_naming_record_and_field(ex, srv):
    """null, a kept field absent from one record, or a numeric that reads as missing: 400 naming the record and
    the field; the next good request succeeds. Predictor itself still scores such records (missing -> OOV)."""
    p = Predictor(ex.ids)
    recs = ex.records[:4]
    want = p.predict(recs)
    cases = [([recs[0], {**recs[1], "price": None}], "record 1, field 'price' is null"),
             ([{**recs[0], "tags": None}], "record 0, field 'tags' is null"),
             ([recs[0], recs[1], {k: v for k, v in recs[2].items() if k != "city"}],
              "record 2, field 'city' is absent (other records have it)"),
             ([{k: v for k, v in recs[0].items() if k != "noise"}, recs[1]], "record 0, field 'noise' is absent"),
             ([recs[0], {**recs[1], "price": " "}], "record 1, field 'price' is ' ', which reads as a missing number"),
             ([{**recs[0], "price": "nan"}], "record 0, field 'price' is 'nan', which reads as a missing number")]
    for rows, text in cases:
        status, hdrs, reply = request(srv, "POST", "/v2/models/ctr/records", json.dumps(rows).encode())
        assert status == 400 and hdrs["content-type"] == "application/json", (text, reply)
        err = json.loads(reply)["error"]
        assert text in err and "\n" not in err and "no missing values" in err, (text, err)
        assert np.isfinite(p.predict(rows)).all()  # Python's Predictor stays lenient
        status, _, reply = request(srv, "POST", "/v2/models/ctr/records", json.dumps(recs).encode())
        assert status == 200, reply
        assert np.abs(np.asarray(json.loads(reply)["outputs"][0]["data"]) - want).max() <= 1e-6


def test_oversized_body_is_refused_before_it_is_read(ex, srv):
    """A 50 MB body: 413 as soon as the headers arrive, while most of the body was never sent."""
    host, port = srv.hostport.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v2/models/ctr/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 52428800\r\n\r\n" + b" " * 65536)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert "over the limit" in json.loads(body)["error"]
    # chunked, without Content-Length: refused once the limit is passed
    with running(ex.ids, max_body_mb=0.01) as s:
        def chunks():
            for _ in range(64):
                yield b" " * 4096
        host, port = s.hostport.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v2/models/ctr/infer", body=chunks(), encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 413 and "passes the limit" in json.loads(r.read())["error"]
        conn.close()
        # a body of exactly the limit is taken, with Content-Length or chunked; one byte more is not
        limit = ServeOptions(max_body_mb=0.01).max_body_bytes
        exact = json.dumps(ex.records[:20]).encode()
        exact += b" " * (limit - len(exact))
        assert len(exact) == limit == 10_485
        status, _, reply = request(s, "POST", "/v2/models/ctr/records", exact)
        assert status == 200, reply
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v2/models/ctr/records", body=iter([exact[:4096], exact[4096:]]), encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 200, r.read()
        conn.close()
        status, _, reply = request(s, "POST", "/v2/models/ctr/records", exact + b" ")
        assert status == 413 and "of 10,486 bytes is over the limit of 10,485 bytes" in json.loads(reply)["error"]
    good = json_infer(Predictor(ex.ids).encode(ex.records[:2]))
    assert scores(srv, "ctr", good).shape == (2,)


# ---- metrics --------------------------------------------------------------------------------------------------------
_SAMPLE = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+-]+$')


def test_metrics_prometheus_text(ex, srv):
    good = json_infer(Predictor(ex.ids).encode(ex.records[:2]))
    scores(srv, "ctr", good)
    request(srv, "POST", "/v2/models/ctr/infer", b"nope")
    request(srv, "GET", "/nope")
    status, hdrs, body = request(srv, "GET", "/metrics")
    assert status == 200 and hdrs["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) lightfmp_[a-z_]+ ", line), line
            continue
        assert _SAMPLE.match(line), line
        key, value = line.rsplit(" ", 1)
        samples[key] = float(value)
    by_code = {int(k.split('code="')[1][:3]): v for k, v in samples.items()
               if k.startswith('lightfmp_requests_total{endpoint="infer",')}
    assert by_code[200] >= 1 and by_code[400] >= 1
    assert samples['lightfmp_request_errors_total{endpoint="infer"}'] == sum(v for c, v in by_code.items() if c >= 400)
    buckets = [v for k, v in samples.items()
               if k.startswith('lightfmp_request_duration_seconds_bucket{endpoint="infer"')]
    total = sum(by_code.values())
    assert buckets == sorted(buckets) and buckets[-1] == total  # cumulative; +Inf holds every infer request
    assert samples['lightfmp_request_duration_seconds_count{endpoint="infer"}'] == total
    assert samples['lightfmp_request_duration_seconds_sum{endpoint="infer"}'] > 0
    assert samples['lightfmp_requests_total{endpoint="other",code="404"}'] >= 1  # a path that is no route
    assert samples['lightfmp_model_calls_total{model="ctr"}'] >= 1
    assert samples["lightfmp_requests_in_flight"] == 0


def test_metrics_buckets_sums_and_error_counts():
    """A value equal to a bucket's bound is in that bucket (Prometheus `le` is <=); `_sum` adds the values;
    requests per model call count requests, not rows; a 499 (the client went away) is an error."""
    m = Metrics("m")
    m.model_call(rows=4, requests=2)
    m.model_call(rows=1, requests=1)
    m.request("infer", 200, 0.25)
    m.request("infer", 499, 0.5)
    lines = m.text().splitlines()
    for line in ('lightfmp_batch_rows_bucket{model="m",le="2"} 1', 'lightfmp_batch_rows_bucket{model="m",le="4"} 2',
                 'lightfmp_batch_rows_sum{model="m"} 5.0', 'lightfmp_batch_rows_count{model="m"} 2',
                 'lightfmp_batch_requests_bucket{model="m",le="1"} 1',
                 'lightfmp_batch_requests_bucket{model="m",le="2"} 2',
                 'lightfmp_batch_requests_sum{model="m"} 3.0', 'lightfmp_batch_requests_count{model="m"} 2',
                 'lightfmp_request_duration_seconds_bucket{endpoint="infer",le="0.1"} 0',
                 'lightfmp_request_duration_seconds_bucket{endpoint="infer",le="0.25"} 1',
                 'lightfmp_request_duration_seconds_bucket{endpoint="infer",le="0.5"} 2',
                 'lightfmp_request_duration_seconds_sum{endpoint="infer"} 0.75',
                 'lightfmp_requests_total{endpoint="infer",code="499"} 1',
                 'lightfmp_request_errors_total{endpoint="infer"} 1'):
        assert line in lines, line
    assert m.errors() == {"infer": 1}


# ---- the real command -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def serve_process(export):
    """`lightfmp serve EXPORT --port 0` in a subprocess (its output as text pipes), killed at the end if still up."""
    proc = subprocess.Popen([sys.executable, "-m", "lightfmp", "serve", str(export), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serve_scores_and_sigterm_lets_the_request_in_flight_finish(ex):
    with serve_process(ex.ids) as proc:
        line = proc.stdout.readline()
        m = re.search(r"on (http://127\.0\.0\.1:(\d+))", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        s = SimpleNamespace(hostport=m.group(1).removeprefix("http://"))
        c = triton.InferenceServerClient(s.hostport)
        deadline = time.monotonic() + 20
        while not c.is_server_ready():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        p = Predictor(ex.ids)
        feeds = p.encode(ex.records[:32])
        got = c.infer("ctr", triton_inputs(feeds, ex.schema["inputs"], True)).as_numpy("probability")
        assert np.abs(got - p.predict(ex.records[:32])).max() <= 1e-6
        # a large request (JSON, ~8 MB): SIGTERM arrives while it is in flight
        n = 300_000
        big = {k: np.repeat(v, n // 32 + 1, axis=0)[:n] for k, v in feeds.items()}
        body = json.dumps(json_infer(big)).encode()
        result = {}

        def send():
            result["reply"] = request(s, "POST", "/v2/models/ctr/infer", body)
        t = threading.Thread(target=send)
        t.start()
        while True:
            text = request(s, "GET", "/metrics")[2].decode()
            if re.search(r"^lightfmp_requests_in_flight [1-9]", text, re.M):
                break
            assert t.is_alive(), "the large request finished before it was seen in flight"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        status, _, reply = result["reply"]
        assert status == 200 and json.loads(reply)["outputs"][0]["shape"] == [n]
        assert proc.wait(30) == 0
        assert "Traceback" not in proc.stderr.read()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_right_after_the_served_line_is_not_lost(ex, sig):
    """A supervisor may stop the server as soon as it prints its line, before uvicorn has put its own handlers in
    place: the stop must still end it, exit 0 and no traceback."""
    for _ in range(3):  # the window is a few milliseconds wide: a few tries
        with serve_process(ex.ids) as proc:
            assert "serving model" in proc.stdout.readline()
            proc.send_signal(sig)
            assert proc.wait(30) == 0
            assert "Traceback" not in proc.stderr.read()


def test_a_body_still_arriving_when_shutdown_gives_up_gets_a_json_503(ex):
    """A client that sends part of a body and stalls holds the graceful shutdown until its grace period passes;
    then the request is answered 503 in the protocol's error body (not a plain-text 500 and a traceback)."""
    with running(ex.ids, grace=0.5) as s:
        host, port = s.hostport.rsplit(":", 1)
        stalled = socket.create_connection((host, int(port)), timeout=30)
        try:
            stalled.sendall(b"POST /v2/models/ctr/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 1000\r\n\r\n[{")
            deadline = time.monotonic() + 20
            while not re.search(r"^lightfmp_requests_in_flight [1-9]", request(s, "GET", "/metrics")[2].decode(),
                                re.M):
                assert time.monotonic() < deadline, "the stalled request was never in flight"
                time.sleep(0.01)
            s.server.should_exit = True
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                chunk = stalled.recv(4096)
                if not chunk:
                    break
                reply += chunk
        finally:
            stalled.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"application/json" in head, reply
    assert "shutting down" in json.loads(body)["error"]
    assert not s.thread.is_alive()


def _stall(s) -> socket.socket:
    """A connection that sends a request's head and part of its body, then nothing; returned once in flight."""
    host, port = s.hostport.rsplit(":", 1)
    stalled = socket.create_connection((host, int(port)), timeout=30)
    stalled.sendall(b"POST /v2/models/ctr/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n{\"inputs\"")
    deadline = time.monotonic() + 20
    while not re.search(r"^lightfmp_requests_in_flight [1-9]", request(s, "GET", "/metrics")[2].decode(), re.M):
        assert time.monotonic() < deadline, "the stalled request was never in flight"
        time.sleep(0.01)
    return stalled


def test_a_stalled_upload_does_not_hold_a_lone_request_for_the_batch_wait(ex):
    """The batch waits for requests on their way to it; a body still arriving may never arrive."""
    p = Predictor(ex.ids)
    doc = json_infer(p.encode(ex.records[:3]))
    with running(ex.ids, max_batch=512, batch_wait_ms=5000) as s:
        stalled = _stall(s)
        try:
            t0 = time.perf_counter()
            got = scores(s, "ctr", doc)
            waited = time.perf_counter() - t0
        finally:
            stalled.close()
    assert np.abs(got - p.predict(ex.records[:3])).max() <= 1e-6
    assert waited < 2.5  # not the 5 s window


def test_a_request_whose_client_went_away_is_not_scored(ex):
    """While one batch runs, a request arrives whole and its client closes the connection: it is dropped from the
    queue (499 in the metrics), never given to the model; the next request is scored as usual."""
    p = Predictor(ex.ids)
    with running(ex.ids, max_batch=512, batch_wait_ms=1) as s:
        model = s.server.config.app.state.model
        real, seen, gate = model.predictor.run, [], threading.Event()

        def run(feeds):  # the first call holds the batcher until the gate opens
            seen.append(len(next(iter(feeds.values()))))
            if len(seen) == 1:
                gate.wait(20)
            return real(feeds)
        model.predictor.run = run
        first = threading.Thread(target=scores, args=(s, "ctr", json_infer(p.encode(ex.records[:3]))))
        first.start()
        deadline = time.monotonic() + 20
        while not seen:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        body = json.dumps(json_infer(p.encode(ex.records[:7]))).encode()
        host, port = s.hostport.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as gone:
            gone.sendall(b"POST /v2/models/ctr/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        while s.metrics.requests.get(("infer", 499), 0) == 0:
            assert time.monotonic() < deadline, "the abandoned request was never dropped"
            time.sleep(0.01)
        gate.set()
        first.join(20)
        got = scores(s, "ctr", json_infer(p.encode(ex.records[:2])))
    assert seen == [3, 2]  # the 7 rows of the abandoned request never reached the model
    assert np.abs(got - p.predict(ex.records[:2])).max() <= 1e-6


def test_cli_refuses_bad_input(ex, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        for args, text in ((["serve", str(tmp_path / "nope")], f"{tmp_path / 'nope'}: export directory not found"),
                           (["serve", str(tmp_path)], "not a lightfmp export"),
                           (["serve", str(ex.ids), "--port", str(port)],
                            f"--port {port}: 127.0.0.1:{port} is already in use"),
                           (["serve", str(ex.ids), "--max-batch", "0"], "--max-batch 0: must be >= 1"),
                           (["serve", str(ex.ids), "--batch-wait-ms", "-1"], "--batch-wait-ms -1.0: must be >= 0"),
                           (["serve", str(ex.ids), "--port", "70000"], "--port 70000: must be <= 65535"),
                           (["serve", str(ex.ids), "--max-body-mb", "0"], "--max-body-mb 0.0: must be > 0"),
                           (["serve", str(ex.ids), "--max-body-mb", "1e-7"], "--max-body-mb 1e-07: is less than one byte")):
            res = runner.invoke(app, args)
            assert res.exit_code == 2, (args, res.output)
            assert text in res.stderr and len(res.stderr.strip().splitlines()) == 1, (args, res.stderr)
            assert "Traceback" not in res.output
    finally:
        taken.close()


# ---- profile --url --------------------------------------------------------------------------------------------------
def test_load_counts_an_answer_of_the_wrong_length_as_an_error(ex, srv):
    """`profile --url` checks that each answer holds one score per row sent: a 200 with another number of scores is
    an error, not a success."""
    p = Predictor(ex.ids)
    body, headers = infer_request(p.bundle.inputs, p.encode(ex.records[:2]), "probability")
    host, port = srv.hostport.rsplit(":", 1)
    ok = measure(Target(host, int(port)), "ctr", body, headers, 2, 1, 3, 10.0)
    assert ok["errors"] == 0 and ok["requests"] == 3
    bad = measure(Target(host, int(port)), "ctr", body, headers, 3, 1, 3, 10.0)  # told 3 rows; the body holds 2
    assert bad["requests"] == 0 and bad["warmup_errors"] == 1 and bad["errors"] == 4
    assert bad["first_error"] == "response shape [2], expected [3]"


def test_profile_url_measures_a_running_server(ex, srv, tmp_path):
    j = tmp_path / "load.json"
    res = runner.invoke(app, ["profile", str(ex.ids), "--url", srv.url, "--clients", "1,4", "--batch-sizes", "1,8",
                              "--max-runs", "40", "--max-seconds", "0.5", "--json", str(j)])
    assert res.exit_code == 0, res.output
    assert "requests/s" in res.stdout
    rows = json.loads(j.read_text())["results"]
    assert [(r["clients"], r["batch_size"]) for r in rows] == [(1, 1), (1, 8), (4, 1), (4, 8)]
    for r in rows:
        assert r["errors"] == 0 and r["warmup_errors"] == 0 and 0 < r["requests"] <= 40
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["rows_per_s"] == pytest.approx(r["requests_per_s"] * r["batch_size"])
    for args, text in ((["--compare", str(ex.ids)], "--compare: not with --url"),
                       (["--clients", "0"], "--clients 0: must be >= 1"),
                       ([], "does not serve model 'ctr_raw'")):
        model = ex.raw if not args else ex.ids
        res = runner.invoke(app, ["profile", str(model), "--url", srv.url, *args])
        assert res.exit_code == 2 and text in res.stderr, res.output
    for bad in ("https://127.0.0.1:1", "http://[::1"):  # not plain HTTP; an IPv6 bracket left open
        res = runner.invoke(app, ["profile", str(ex.ids), "--url", bad])
        assert res.exit_code == 2 and "expected http://HOST:PORT" in res.stderr, res.output
        assert len(res.stderr.strip().splitlines()) == 1
    for path in ("/v2", "/v2/models/ctr", "/gw/v2/health/ready"):  # the routes' root or a route, not the server's
        res = runner.invoke(app, ["profile", str(ex.ids), "--url", srv.url + path])
        assert res.exit_code == 2 and "without /v2" in res.stderr and len(res.stderr.strip().splitlines()) == 1, path
    from lightfmp.serve.load import Target
    assert Target.parse("http://gw:80/api/v2/models-gw/").prefix == "/api/v2/models-gw"  # a proxy's mount path
