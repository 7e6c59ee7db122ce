"""The served model without torch or transformers (its tokenizer run by the tokenizers library), and its request
log: sampled, written off the request path, readable as data.unlabeled, and harmless when its target fails."""

import json
import socket
import threading

import numpy as np
import pytest

from kdpipe.config import DataConfig
from kdpipe.data import read_table
from kdpipe.request_log import RequestLog


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"text": f"text {i}", "labels": ["positive"], "scores": {"negative": 0.25, "positive": 0.75}}
            for i in range(start, start + n)]


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_served_tokenizer_is_transformers_own(minilm_path, shared_data, tmp_path):
    """kdpipe.serving encodes with the tokenizers library what `AutoTokenizer(texts, truncation=True,
    max_length=L, padding=True)` gives, id for id, on real SST-2 sentences, odd text and over-long text, for the
    real MiniLM tokenizer, and for it saved to pad and truncate on the left."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from kdpipe.serving import TextEncoder

    left = AutoTokenizer.from_pretrained(minilm_path, padding_side="left", truncation_side="left")
    left.save_pretrained(tmp_path / "left")

    texts = [line.split("\t")[0] for line in (shared_data / "sst2/dev.tsv").read_text().splitlines()[1:300]]
    texts += ["Ünïcödé naïve café 東京 😀", "", "   ", "word " * 600, "[PAD] [CLS] x [SEP]", "don't\tstop"]
    for folder in (minilm_path, tmp_path / "left"):
        hf = AutoTokenizer.from_pretrained(str(folder))
        for max_length in (8, 64):
            encode = TextEncoder(Path(folder), max_length)
            for start in range(0, len(texts), 50):
                batch = texts[start:start + 50]
                want = hf(batch, truncation=True, max_length=max_length, padding=True, return_tensors="np")
                got = encode(batch)
                assert set(want) == set(got)
                for key in want:
                    np.testing.assert_array_equal(got[key], want[key], err_msg=f"{folder} {key} L={max_length}")


def test_rows_are_sampled_at_the_configured_rate(tmp_path):
    for rate, low, high in ((1.0, 4000, 4000), (0.25, 850, 1150), (0.0, 0, 0)):
        log = RequestLog(str(tmp_path / f"r{rate}.jsonl"), rate, model={"model_version": "m/1"})
        for start in range(0, 4000, 16):
            log.record(rows(16, start))
        log.close()
        written = lines(tmp_path / f"r{rate}.jsonl") if rate else []
        assert low <= len(written) <= high and log.written == len(written), (rate, len(written))
    assert written == [] and not (tmp_path / "r0.0.jsonl").exists()


def test_workers_share_one_file_and_a_folder_takes_part_files(tmp_path):
    """Two loggers (two server workers) append to one file concurrently: every line whole. A folder target gets
    part files. Both read back as data.unlabeled, under the configured text column."""
    shared = tmp_path / "requests.jsonl"
    logs = [RequestLog(str(shared), 1.0, "sentence", {"model_version": "m/2"}, flush_rows=7) for _ in range(2)]
    threads = [threading.Thread(target=lambda lg=lg, k=k: [lg.record(rows(10, k * 10_000 + i * 10))
                                                               for i in range(100)]) for k, lg in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lg in logs:
        lg.close()
    written = lines(shared)
    assert len(written) == 2000 and len({r["sentence"] for r in written}) == 2000
    assert {r["model_version"] for r in written} == {"m/2"} and all(r["time"].endswith("+00:00") for r in written)
    cfg = DataConfig(train="t.csv", validation="v.csv", text_column="sentence")
    assert len(read_table(str(shared), cfg)) == 2000

    folder = tmp_path / "parts"
    log = RequestLog(f"{folder}/", 1.0, "sentence", flush_rows=50)
    log.record(rows(120))
    log.close()
    parts = sorted(folder.iterdir())
    assert len(parts) == 3 and all(p.name.startswith("requests-") and p.suffix == ".jsonl" for p in parts)
    assert sorted(read_table(f"{folder}/", cfg)["sentence"]) == sorted(r["text"] for r in rows(120))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("target", ["unwritable", "unreachable"])
def test_a_failing_target_fails_no_request(target, tmp_path, monkeypatch, capsys):
    """An unwritable path (its parent is a file) or an object store nobody answers at: record() returns and
    raises nothing; the rows are counted as lost, one line on stderr says so, and the writer does not try again
    at once."""
    if target == "unwritable":
        (tmp_path / "a-file").write_text("")
        where = str(tmp_path / "a-file" / "requests.jsonl")
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        where = "s3://requests/logs/"
    log = RequestLog(where, 1.0, flush_rows=100)
    for start in range(0, 300, 10):
        log.record(rows(10, start))  # no exception, whatever the writer meets
    log.close(timeout=120)
    assert (log.written, log.failed, log.dropped) == (0, 300, 0)
    assert log.attempts == 1  # after a failure the target rests (5 s, doubling): the later batches are dropped
    err = capsys.readouterr().err
    assert err.count("kdpipe: request log") == 1 and "requests are unaffected" in err and where in err


def test_request_log_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="log_sample_rate"):
        RequestLog(str(tmp_path / "r.jsonl"), 1.5)
    from kdpipe.config import ServingConfig

    with pytest.raises(ValueError, match="credentials come from the environment"):
        ServingConfig(log_requests="s3://key:secret@bucket/logs/")
