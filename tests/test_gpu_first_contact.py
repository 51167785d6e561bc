"""bench/gpu_first_contact.sh in its CPU mode (what CI can run): every stage reports in
summary.txt, the GPU stages are skipped with the reason, the checks run on the CPU and
write their JSON lines, and what lands in $OUT fits the device tool's 8 files."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_first_contact.sh"


def _run(tmp_path, **env):
    out = tmp_path / "out"
    child = subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OUT": str(out), "PYTHON": sys.executable,
             "FIRST_CONTACT_DEVICE": "cpu", **env})
    return child, out


def test_cpu_mode_runs_every_stage_and_reports(tmp_path):
    child, out = _run(tmp_path)
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    for line in ("stage env: ok", "stage build: skipped (no GPU", "stage smoke: ok",
                 "stage steps: ok", "stage tests: skipped (no GPU)",
                 "stage memcheck: skipped (no GPU)"):
        assert line in summary, summary
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and "results.tar.gz" in files, files
    smoke = [json.loads(line) for line in (out / "smoke.jsonl").read_text().splitlines()]
    cells = {r["cell"] for r in smoke}
    assert cells == {"lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu", "lstm_cell",
                     "gru_cell", "rnn_cell"}
    assert {r["dtype"] for r in smoke} == {"float32", "bfloat16", "float16", "float64"}
    assert all(r["ok"] for r in smoke), [r for r in smoke if not r["ok"]]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert steps and all("error" not in r and r["ours_forward_us_per_step"] > 0 for r in steps)


def test_stages_past_the_deadline_are_skipped_and_reported(tmp_path):
    child, out = _run(tmp_path, DEADLINE_S="5")
    summary = (out / "summary.txt").read_text()
    assert child.returncode == 0, summary
    assert "stage env: skipped (deadline reached)" in summary
    assert "stage smoke: skipped (deadline reached)" in summary
