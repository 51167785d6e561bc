"""Every example runs: the lesson examples in their --smoke mode (seconds), the short
demos as they are. Checks the exit status and the files they promise to write."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _run(args, tmp_path, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.mark.parametrize("script", ["drop_in_lstm.py", "packed_sequences.py", "profile_model.py"])
def test_demo_runs(script, tmp_path):
    _run([str(EXAMPLES / script)], tmp_path)


def test_long_term_dependencies_smoke(tmp_path):
    out = tmp_path / "ltd"
    _run([str(EXAMPLES / "long_term_dependencies.py"), "--smoke", "--out", str(out),
          "--device", "cpu"], tmp_path)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {(r["task"], r["cell"]) for r in records} == {
        (t, c) for t in ("adding", "copy") for c in ("rnn", "lstm", "gru")}
    assert all(len(r["curve"]) == r["steps"] or r["diverged"] for r in records)
    text = (out / "results.md").read_text()
    assert "| LSTM |" in text and "baseline" in text


def test_gradient_flow_smoke(tmp_path):
    out = tmp_path / "gf"
    _run([str(EXAMPLES / "gradient_flow.py"), "--smoke", "--out", str(out), "--device", "cpu"],
         tmp_path)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["part"] for r in records} == {"cells", "radius", "clipping"}
    cells = [r for r in records if r["part"] == "cells"]
    assert {r["cell"] for r in cells} == {"rnn", "lstm", "gru"}
    assert all(len(r["init"]) == 12 and all(v >= 0 for v in r["init"]) for r in cells)


def test_seq2seq_smoke(tmp_path):
    out = tmp_path / "s2s"
    _run([str(EXAMPLES / "seq2seq.py"), "--smoke", "--out", str(out), "--device", "cpu"], tmp_path)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {(r["cell"], r["attention"]) for r in records} == {
        (c, a) for c in ("rnn", "lstm", "gru") for a in (False, True)}
    assert all(0 <= r["accuracy"] <= 1 for r in records)


def test_seq2seq_dates_are_exact_and_held_out():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import seq2seq
    finally:
        sys.path.remove(str(EXAMPLES))
    train = seq2seq.dates(300, 0)
    test = seq2seq.dates(100, 1, exclude=frozenset(d[2] for d in train))
    assert not {d[2] for d in test} & {d[2] for d in train}
    for text, iso, date in train[:50]:
        assert iso == date.isoformat() and len(iso) == seq2seq.OUT_LEN
        assert str(date.day) in text


def test_char_lm_smoke(tmp_path):
    out = tmp_path / "clm"
    _run([str(EXAMPLES / "char_lm.py"), "--smoke", "--out", str(out), "--device", "cpu"], tmp_path)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["cell"] for r in records} == {"rnn", "lstm", "gru"}
    assert all(r["val_bpc"] > 0 and r["sample"].startswith("The ") for r in records)


def test_forecast_smoke(tmp_path):
    pytest.importorskip("statsmodels", reason="examples/forecast.py reads its series from "
                        "statsmodels (installed by the README's test command)")
    out = tmp_path / "fc"
    _run([str(EXAMPLES / "forecast.py"), "--smoke", "--out", str(out), "--device", "cpu"], tmp_path)
    records = {json.loads(line)["model"]: json.loads(line)
               for line in (out / "results.jsonl").read_text().splitlines()}
    assert {"seasonal naive", "seasonal naive with drift", "RNN", "LSTM", "GRU"} <= set(records)
    assert all(len(r["forecast"]) == 60 for r in records.values())
