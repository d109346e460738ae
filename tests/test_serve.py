"""`hfmtl serve` (hfmtl/serving/): the real server, started as `hfmtl serve` in a child process on
127.0.0.1, answered through a real HTTP client (httpx). Predictions equal `Predictor.predict`'s, one task
or several; concurrent requests of several tasks share model calls; every kind of bad request gets a
one-line 4xx and the server goes on; SIGTERM lets a request in flight finish, then exits 0. Also the
batcher on its own (a failing request fails alone), the CLI's errors, and the load benchmark's smoke run."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import REPO_ROOT, TASK_CONFIGS, make_config, write_config
from transformers import AutoTokenizer

from hfmtl import MultiTaskModel, cli
from hfmtl.inference import Predictor
from hfmtl.serving.batching import DynamicBatcher

pytestmark = pytest.mark.slow  # child processes that load torch


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("serving_load", REPO_ROOT / "benchmarks" / "serving_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


serving_load = _load_benchmark()
ServerProcess = serving_load.ServerProcess

NER_LABELS = TASK_CONFIGS["ner"]["label_names"]
SPECS = {
    "rte": {
        "type": "classification",
        "num_labels": 2,
        "id2label": {0: "entailment", 1: "not_entailment"},
        "problem_type": "single_label_classification",
    },
    "stsb": {"type": "regression", "num_labels": 1, "problem_type": "regression"},
    "ner": {"type": "token_classification", "num_labels": 9, "id2label": dict(enumerate(NER_LABELS))},
}
PAIRS = [
    {"sentence1": "A man is playing a guitar.", "sentence2": "Someone plays music."},
    {"sentence1": "The cat sat on the mat.", "sentence2": "A dog barks loudly at the mailman every single morning."},
    {"sentence1": "Stocks fell.", "sentence2": "Markets were down sharply on Monday after the announcement."},
    {"sentence1": "It rains.", "sentence2": "The ground is wet."},
]
SENTENCES = [
    {"tokens": ["Angela", "Merkel", "met", "Emmanuel", "Macron", "in", "Paris", "."]},
    {"tokens": ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]},
    {"tokens": ["Peter", "Blackburn"]},
]
MAX_BODY_BYTES = 20_000


@pytest.fixture(scope="module")
def model_dir(tiny_encoder_dir, tmp_path_factory) -> Path:
    """A tiny model (classification, regression, token classification heads) with a run config.yaml."""
    path = tmp_path_factory.mktemp("serve-model")
    torch.manual_seed(0)
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, SPECS)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large random heads: decisive, varied predictions (fresh heads give ~0)
        for param in model.heads.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(path)
    write_config(path / "config.yaml", make_config(tiny_encoder_dir, path, {n: TASK_CONFIGS[n] for n in SPECS}))
    return path


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.from_pretrained(model_dir, device="cpu")


@pytest.fixture(scope="module")
def server(model_dir):
    # a long wait window: the concurrent requests of a test arrive together even on a busy machine
    with ServerProcess(
        model_dir, "--max-wait-ms", "100", "--max-batch-size", "64", "--max-body-bytes", str(MAX_BODY_BYTES)
    ) as process:
        yield process
        status = process.stop(signal.SIGINT)  # Ctrl-C stops it as gracefully as SIGTERM
        assert status == 0 and "stopped by SIGINT" in process.output(), process.output()[-2000:]


def _post(server, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", json=body, timeout=60, **kwargs)


def _assert_same(actual, expected) -> None:
    """A server result equals the predictor's: labels exactly, scores to float precision (a batch pads
    inputs to other lengths than a call of one input does)."""
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (actual, expected)
        for a, e in zip(actual, expected):
            _assert_same(a, e)
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), (actual, expected)
        for key in expected:
            _assert_same(actual[key], expected[key])
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=1e-4)
    else:
        assert actual == expected


# --- endpoints ---------------------------------------------------------------------------------------


def test_health_tasks_and_openapi_docs(server, model_dir):
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["model"] == str(model_dir) and health["device"] == "cpu"
    assert sorted(health["tasks"]) == ["ner", "rte", "stsb"]
    assert health["batching"]["enabled"] is True and health["batching"]["max_batch_size"] == 64
    tasks = httpx.get(f"{server.url}/tasks").json()
    assert tasks["rte"] == {
        "type": "classification",
        "fields": ["sentence1", "sentence2"],
        "inputs": "sentence1, sentence2",
        "labels": ["entailment", "not_entailment"],
        "problem_type": "single_label_classification",
    }
    assert tasks["stsb"]["type"] == "regression" and tasks["stsb"]["labels"] is None
    assert tasks["ner"]["labels"] == NER_LABELS and "tokens" in tasks["ner"]["fields"]
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/predict", "/tasks", "/health"} <= set(schema["paths"])
    assert {"400", "413", "422"} <= set(schema["paths"]["/predict"]["post"]["responses"])
    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text


def test_one_task_one_input_and_a_list(server, predictor):
    one = _post(server, {"task": "rte", "inputs": PAIRS[0]})
    assert one.status_code == 200
    _assert_same(one.json()["predictions"], predictor.predict("rte", PAIRS[0]))
    assert set(one.json()["predictions"]) == {"label", "score"}
    many = _post(server, {"task": "ner", "inputs": SENTENCES}).json()["predictions"]
    _assert_same(many, predictor.predict("ner", SENTENCES))
    assert any(many)  # the perturbed head finds entities
    options = {"return_all_scores": True}
    scored = _post(server, {"task": "rte", "inputs": PAIRS, "options": options}).json()["predictions"]
    _assert_same(scored, predictor.predict("rte", PAIRS, return_all_scores=True))
    assert _post(server, {"task": "stsb", "inputs": []}).json() == {"predictions": []}


def test_several_tasks_and_all_tasks(server, predictor):
    both = _post(server, {"tasks": ["stsb", "rte"], "inputs": PAIRS[1]}).json()["predictions"]
    assert list(both) == ["stsb", "rte"]
    _assert_same(both, {"stsb": predictor.predict("stsb", PAIRS[1]), "rte": predictor.predict("rte", PAIRS[1])})
    inputs = [{**pair, **sentence} for pair, sentence in zip(PAIRS, SENTENCES)]  # the union of the fields
    every = _post(server, {"tasks": "all", "inputs": inputs}).json()["predictions"]
    assert len(every) == len(inputs)
    for task_name in ("rte", "stsb", "ner"):
        _assert_same([result[task_name] for result in every], predictor.predict(task_name, inputs))


def test_concurrent_requests_of_several_tasks_are_batched_together(server, predictor):
    requests = [{"task": "rte", "inputs": pair} for pair in PAIRS] + [{"task": "stsb", "inputs": p} for p in PAIRS]
    requests += [{"task": "ner", "inputs": s} for s in SENTENCES] + [
        {"tasks": ["rte", "ner"], "inputs": {**PAIRS[0], **SENTENCES[0]}}
    ]
    requests = (requests * 3)[:31] + [{"task": "rte", "inputs": {"sentence1": "No pair."}}]  # 32, one bad
    before = httpx.get(f"{server.url}/health").json()["batching"]

    async def send_all():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/predict", json=body) for body in requests))

    responses = asyncio.run(send_all())
    after = httpx.get(f"{server.url}/health").json()["batching"]
    for body, response in zip(requests[:-1], responses[:-1]):
        assert response.status_code == 200, response.text
        if "task" in body:
            expected = predictor.predict(body["task"], body["inputs"])
        else:
            expected = {name: predictor.predict(name, body["inputs"]) for name in body["tasks"]}
        _assert_same(response.json()["predictions"], expected)
    assert responses[-1].status_code == 422 and "missing field 'sentence2'" in responses[-1].json()["error"]
    assert after["requests"] - before["requests"] == 31  # the bad one never reached the model
    batches = after["batches"] - before["batches"]
    assert batches < 31 / 2, after  # gathered: far fewer model calls than requests
    assert after["largest_batch"] > 1 and after["multi_task_batches"] > before["multi_task_batches"]


# --- bad requests ------------------------------------------------------------------------------------

BAD_REQUESTS = [  # (body as JSON or raw bytes, status, part of the message)
    ({"task": "rtx", "inputs": PAIRS[0]}, 422, "unknown task 'rtx'; did you mean 'rte'?"),
    ({"tasks": ["rte", "nope"], "inputs": PAIRS[0]}, 422, "unknown task 'nope'"),
    ({"task": "rte", "inputs": [PAIRS[0], {"sentence1": "x"}]}, 422, "task 'rte', input 1: missing field 'sentence2'"),
    ({"task": "rte", "inputs": {"sentence1": 5, "sentence2": "x"}}, 422, "field 'sentence1' must be a string, got int"),
    ({"task": "ner", "inputs": {"tokens": "not a list"}}, 200, None),  # a raw text: a valid ner input
    ({"task": "ner", "inputs": {"tokens": [1, 2]}}, 422, "field 'tokens' must be a list of strings"),
    ({"task": 3, "inputs": PAIRS[0]}, 422, "task: Input should be a valid string"),
    ({"task": "rte", "tasks": ["rte"], "inputs": PAIRS[0]}, 422, "give either 'task'"),
    ({"inputs": PAIRS[0]}, 422, "the request has neither"),
    ({"tasks": "some", "inputs": PAIRS[0]}, 422, "'tasks' must be a non-empty list"),
    ({"tasks": ["rte", "rte"], "inputs": PAIRS[0]}, 422, "names 'rte' twice"),
    ({"task": "rte"}, 422, "inputs: Field required"),
    ({"task": "rte", "inputs": "A plain string."}, 422, "'inputs' must be one input (a JSON object"),
    ({"task": "rte", "inputs": ["A plain string."]}, 422, "input 0: expected a JSON object with the fields of"),
    ({"task": "rte", "inputs": PAIRS[0], "colour": "red"}, 422, "unknown key 'colour' (the keys are task or tasks"),
    ({"task": "rte", "inputs": PAIRS[0], "options": {"top_k": 0}}, 422, "options.top_k: Input should be greater"),
    ([PAIRS[0]], 422, "the body must be a JSON object"),
    (b'{"task": "rte", "inputs": ', 400, "the body is not valid JSON"),
    (b"", 422, "the body must be a JSON object"),
    (b'{"task": "rte", "inputs": {"sentence1": "\xff"}}', 400, "it is not UTF-8 text"),
    ({"task": "rte", "inputs": PAIRS[0], "options": {"top": 1}}, 422, "unknown key 'options.top' (the keys are return"),
    ({"task": "stsb", "inputs": [PAIRS[0]] * 400}, 413, f"larger than {MAX_BODY_BYTES} bytes"),
]


def test_bad_requests_get_a_one_line_4xx_and_the_server_keeps_serving(server, predictor):
    for body, status, message in BAD_REQUESTS:
        if isinstance(body, bytes):
            response = httpx.post(f"{server.url}/predict", content=body, headers={"content-type": "application/json"})
        else:
            response = _post(server, body)
        assert response.status_code == status, (body, response.text)
        if message is not None:
            assert list(response.json()) == ["error"], response.text
            error = response.json()["error"]
            assert message in error and "\n" not in error, (body, error)

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"task": "rte", "inputs": ['
        for _ in range(400):
            yield (httpx.Request("POST", "/", json=PAIRS[1]).content + b",")
        yield b"{}]}"

    chunked = httpx.post(f"{server.url}/predict", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "larger than" in chunked.json()["error"]
    form = httpx.post(f"{server.url}/predict", data={"task": "rte"})  # not JSON
    assert form.status_code == 422 and "content-type: application/json" in form.json()["error"]
    wrong_path = httpx.get(f"{server.url}/nowhere")
    assert wrong_path.status_code == 404 and wrong_path.json() == {"error": "Not Found"}
    assert httpx.get(f"{server.url}/predict").status_code == 405
    good = _post(server, {"task": "stsb", "inputs": PAIRS[2]})  # the server still serves
    assert good.status_code == 200
    _assert_same(good.json()["predictions"], predictor.predict("stsb", PAIRS[2]))


# --- the batcher on its own ----------------------------------------------------------------------------


def test_a_failing_request_fails_alone_and_batches_respect_their_size():
    calls = []

    def run(entries, options):
        calls.append([entry["x"] for entry in entries])
        if any(entry["x"] == "bad" for entry in entries):
            raise ValueError("cannot do 'bad'")
        return [entry["x"].upper() for entry in entries]

    async def main(batcher, bodies):
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(body) for body in bodies), return_exceptions=True)
        await batcher.stop()
        return results

    bodies = [[{"x": "a"}], [{"x": "bad"}], [{"x": "c"}, {"x": "d"}]]
    results = asyncio.run(main(DynamicBatcher(run, max_batch_size=8, max_wait_ms=50), bodies))
    assert results[0] == ["A"] and results[2] == ["C", "D"] and isinstance(results[1], ValueError)
    assert calls[0] == ["a", "bad", "c", "d"]  # one batch, then each request alone
    calls.clear()
    bodies = [[{"x": letter}] for letter in "abcde"]
    results = asyncio.run(main(DynamicBatcher(run, max_batch_size=2, max_wait_ms=50), bodies))
    assert results == [["A"], ["B"], ["C"], ["D"], ["E"]] and calls == [["a", "b"], ["c", "d"], ["e"]]
    calls.clear()
    asyncio.run(main(DynamicBatcher(run, max_wait_ms=50, enabled=False), bodies))
    assert calls == [["a"], ["b"], ["c"], ["d"], ["e"]]


# --- the command -------------------------------------------------------------------------------------


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(model_dir, predictor):
    # a request waits 3 s for company before it runs: the signal comes while it is in flight
    process = ServerProcess(model_dir, "--max-wait-ms", "3000")
    answer: dict[str, httpx.Response] = {}
    sender = threading.Thread(target=lambda: answer.update(r=_post(process, {"task": "rte", "inputs": PAIRS})))
    sender.start()
    time.sleep(1.0)
    started = time.monotonic()
    status = process.stop(signal.SIGTERM)
    sender.join(30)
    assert status == 0, process.output()[-2000:]
    assert answer["r"].status_code == 200
    _assert_same(answer["r"].json()["predictions"], predictor.predict("rte", PAIRS))
    assert time.monotonic() - started < 20 and "stopped by SIGTERM" in process.output()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{process.url}/health", timeout=5)


def test_serve_errors_are_one_line(model_dir, monkeypatch, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", str(model_dir), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert cli.main(["serve", str(model_dir), "--max-batch-size", "0"]) == 2
    assert "--max-batch-size 0 must be at least 1" in capsys.readouterr().err
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "fastapi" else real_find_spec(name))
    assert cli.main(["serve", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == 'error: hfmtl serve needs fastapi: pip install "hfmtl[serve]"'


def test_the_load_benchmark_measures_a_running_server(server, model_dir):
    payloads = serving_load.payloads_from_config(model_dir, per_task=4)
    assert [p["task"] for p in payloads[:3]] == ["rte", "stsb", "ner"] and len(payloads) == 12
    result = serving_load.measure(server.url, payloads, clients=4, requests=16, warmup=4)
    assert result["requests"] == 16 and result["errors"] == 0
    assert result["requests_per_s"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"]
