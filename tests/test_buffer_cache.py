"""The cache of large CPU buffers (Note [buffer cache] in csrc/cpu/memory.h): reuse, its
limit, tensors from it behaving as any tensor, and the kernels never reading memory they
did not write (every buffer poisoned with NaN, in a child process)."""

import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import rnnkernels

TESTS = Path(__file__).resolve().parent

# T*B = 1024 rows: the workspace (5H = 1280 floats a row, 5 MiB), grad_x_proj (4 MiB)
# and the output (1 MiB) of one LSTM layer; the first two are cached, the last is not.
T, B, I, H = 32, 32, 64, 256


@pytest.fixture
def fresh_cache():
    """A cache with the default limit and nothing in it, restored afterwards."""
    limit = rnnkernels.cpu_cache_stats()["limit_bytes"]
    rnnkernels.empty_cpu_cache()
    yield
    rnnkernels.set_cpu_cache_limit(limit)
    rnnkernels.empty_cpu_cache()


def _training_pass(module, x, upstream):
    module.zero_grad(set_to_none=True)
    x.grad = None
    out, (h_n, c_n) = module(x)
    out.backward(upstream)
    return [out.detach(), h_n.detach(), c_n.detach(), x.grad,
            *[p.grad for p in module.parameters()]]


def _module_and_inputs():
    torch.manual_seed(0)
    module = rnnkernels.LSTM(I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    upstream = torch.randn(T, B, H)
    return module, x, upstream


def test_a_second_pass_reuses_the_first_ones_buffers(fresh_cache):
    rnnkernels.set_cpu_cache_limit(1 << 30)
    module, x, upstream = _module_and_inputs()
    first = _training_pass(module, x, upstream)
    after_first = rnnkernels.cpu_cache_stats()
    assert after_first["misses"] >= 2, after_first  # workspace and grad_x_proj at least
    assert after_first["cached_bytes"] > 0, after_first
    second = _training_pass(module, x, upstream)
    after_second = rnnkernels.cpu_cache_stats()
    assert after_second["misses"] == after_first["misses"], (after_first, after_second)
    assert after_second["hits"] >= after_first["hits"] + 2, (after_first, after_second)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_results_do_not_depend_on_the_cache(fresh_cache):
    module, x, upstream = _module_and_inputs()
    rnnkernels.set_cpu_cache_limit(0)
    uncached = _training_pass(module, x, upstream)
    assert rnnkernels.cpu_cache_stats()["cached_bytes"] == 0
    rnnkernels.set_cpu_cache_limit(1 << 30)
    _training_pass(module, x, upstream)  # fills the cache
    cached = _training_pass(module, x, upstream)
    for a, b in zip(uncached, cached):
        assert torch.equal(a, b)
    nn_module = torch.nn.LSTM(I, H)
    nn_module.load_state_dict(module.state_dict())
    expected = _training_pass(nn_module, x, upstream)
    for a, b in zip(cached, expected):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5)


def test_limit_and_empty(fresh_cache):
    module, x, upstream = _module_and_inputs()
    rnnkernels.set_cpu_cache_limit(6 << 20)  # room for one of the two blocks
    _training_pass(module, x, upstream)
    stats = rnnkernels.cpu_cache_stats()
    assert stats["limit_bytes"] == 6 << 20
    assert 0 < stats["cached_bytes"] <= 6 << 20, stats
    rnnkernels.empty_cpu_cache()
    assert rnnkernels.cpu_cache_stats()["cached_bytes"] == 0
    rnnkernels.set_cpu_cache_limit(1 << 30)
    _training_pass(module, x, upstream)
    assert rnnkernels.cpu_cache_stats()["cached_bytes"] > 6 << 20
    rnnkernels.set_cpu_cache_limit(4 << 20)  # lowering the limit evicts at once
    assert rnnkernels.cpu_cache_stats()["cached_bytes"] <= 4 << 20


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_limit_is_refused(bad, error, fresh_cache):
    before = rnnkernels.cpu_cache_stats()["limit_bytes"]
    with pytest.raises(error, match="set_cpu_cache_limit"):
        rnnkernels.set_cpu_cache_limit(bad)
    assert rnnkernels.cpu_cache_stats()["limit_bytes"] == before


def test_cached_outputs_are_ordinary_tensors(fresh_cache):
    module, x, _ = _module_and_inputs()
    module = rnnkernels.LSTM(I, 1024)  # output [T*B, 1024] float32: 4 MiB, from the cache
    with torch.no_grad():
        out, _ = module(x)
    assert rnnkernels.cpu_cache_stats()["in_use_bytes"] >= out.nbytes
    copy = out.clone()
    assert torch.equal(pickle.loads(pickle.dumps(out)), copy)
    out.resize_(2 * T, B, 1024)  # the storage grows through the cache's allocator
    assert torch.equal(out[:T], copy)
    out.resize_(1, 2, 3)
    assert out.shape == (1, 2, 3)
    del out
    # Freed from another thread: the cache is shared and locked.
    with torch.no_grad():
        out2, _ = module(x)
    holder = [out2]
    del out2
    worker = threading.Thread(target=lambda: holder.pop().zero_())  # the last reference
    worker.start()
    worker.join()
    assert not holder
    assert rnnkernels.cpu_cache_stats()["cached_bytes"] > 0


def test_concurrent_passes_from_two_threads(fresh_cache):
    module, x, upstream = _module_and_inputs()
    expected = _training_pass(module, x, upstream)
    results, errors = {}, []

    def run(k):
        try:
            m = rnnkernels.LSTM(I, H)
            m.load_state_dict(module.state_dict())
            xk = x.detach().clone().requires_grad_()
            for _ in range(3):
                results[k] = _training_pass(m, xk, upstream)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in range(2):
        for a, b in zip(results[k], expected):
            assert torch.equal(a, b)


def _child(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                          capture_output=True, text=True, cwd=TESTS.parent)


def test_environment_limit_and_its_validation():
    code = "import rnnkernels; print(rnnkernels.cpu_cache_stats()['limit_bytes'])"
    ok = _child(code, RNNKERNELS_CPU_CACHE_MB="12")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(12 << 20)
    bad = _child(code, RNNKERNELS_CPU_CACHE_MB="lots")
    assert bad.returncode != 0
    assert "RNNKERNELS_CPU_CACHE_MB" in bad.stderr and "lots" in bad.stderr, bad.stderr


def test_poisoned_buffers_are_really_poisoned():
    """The hook the next test relies on: a buffer handed out under
    RNNKERNELS_CPU_CACHE_POISON=1 holds NaN where nothing was written."""
    code = ("import torch, rnnkernels\n"
            "out, _ = rnnkernels.LSTM(3, 4)(torch.randn(2, 1, 3))\n"
            "out = out.detach()\n"
            "out.resize_(64, 4)\n"
            "print(bool(torch.isnan(out[2:]).all()), bool(torch.isfinite(out[:2]).all()))")
    child = _child(code, RNNKERNELS_CPU_CACHE_POISON="1")
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["True", "True"]


def test_kernels_write_every_element_they_read():
    """The compact equivalence subset (every cell, packed, bidirectional, projections,
    layer norm, odd sizes, the K-sliced LSTM backward) with every rnnkernels buffer
    poisoned with NaN: a read of memory the kernels did not write shows up as NaN."""
    isa = rnnkernels._C.cpu_capability()
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(TESTS / "isa_subset.py")],
        cwd=TESTS.parent, capture_output=True, text=True,
        env={**os.environ, "RNNKERNELS_CPU_CACHE_POISON": "1", "RNNKERNELS_EXPECTED_ISA": isa})
    report = child.stdout + child.stderr
    assert child.returncode == 0, report[-6000:]
    assert " passed" in report and " failed" not in report and " skipped" not in report, \
        report[-3000:]


def test_bench_script_runs():
    """bench/buffer_cache.py (the README's cache measurement) on a tiny case."""
    child = subprocess.run(
        [sys.executable, str(TESTS.parent / "bench" / "buffer_cache.py"), "--cell", "gru",
         "--size", "4", "2", "3", "5", "--repeats", "2", "--threads", "1"],
        cwd=TESTS.parent, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(TESTS.parent), os.environ.get("PYTHONPATH")]))})
    assert child.returncode == 0, child.stderr
    lines = child.stdout.splitlines()
    assert lines[0].startswith("gru training (T, B, I, H) = (4, 2, 3, 5)"), child.stdout
    assert len(lines) == 4, child.stdout
    for line, name in zip(lines[1:], ("ours, cache", "ours, no cache", "torch.nn")):
        assert line.strip().startswith(name) and "nn/this" in line and "faults/pass" in line, line


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_can_use_the_cache(fresh_cache):
    """The child of a fork (DataLoader workers) inherits the cache and its lock; a pass
    there must neither hang nor differ from the parent's."""
    module, x, upstream = _module_and_inputs()
    expected = _training_pass(module, x, upstream)  # the parent's cache now holds blocks
    code = (
        "import os, sys, torch, rnnkernels\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_buffer_cache import _module_and_inputs, _training_pass\n"
        "module, x, upstream = _module_and_inputs()\n"
        "_training_pass(module, x, upstream)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    torch.set_num_threads(1)\n"
        "    torch.save(_training_pass(module, x, upstream), sys.argv[1])\n"
        "    os._exit(0)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "child.pt")
        child = subprocess.run([sys.executable, "-c", code, path], cwd=TESTS.parent,
                               capture_output=True, text=True, timeout=120)
        assert child.returncode == 0, child.stderr
        got = torch.load(path)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
