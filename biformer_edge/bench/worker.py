"""The measuring subprocess: one configuration per fresh interpreter (``python -m biformer_edge.bench.worker
'<json>'``), so one runtime's allocator, thread pools or caches never leak into another's numbers.

The child loads the session, records its RSS, resets the kernel's RSS high-water mark, runs ``warmup`` + ``runs``
inferences and prints one ``BIFORMER_BENCH_RESULT {json}`` line: the per-run latencies plus

* peak RSS: the child's RSS high-water mark over its whole life (Python + imports + session + runs), read from
  VmHWM; ``ru_maxrss`` only where /proc is missing, because a child's ``ru_maxrss`` starts at its parent's RSS;
* loaded RSS: VmRSS right after the session was created (before the first inference);
* activation: the RSS high-water mark during the runs minus the loaded RSS, i.e. what inference itself adds.

Sessions come from ``targets.open_session`` (torch: ``TorchSession`` on the model); the options each one takes
(``threads``, ``precision_hint``) are read from its constructor's signature, not from a table here.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from ..errors import first_line
from .sessions import open_worker_session

RESULT_MARKER = "BIFORMER_BENCH_RESULT "


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_kib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next VmHWM is the peak of what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_worker(spec: dict) -> dict:
    from ..parity.inputs import parity_inputs
    # A rendered scene, the input parity uses: Gaussian noise through random weights drives softmax into float32
    # denormals, which x86 runs tens of times slower than any real image (biformer_tiny eager: 4.4 s vs 0.1 s).
    x = parity_inputs(tuple(spec["input_shape"]))[0][0]
    baseline_kib = _proc_status_kib("VmRSS")  # interpreter + imports (torch only in the torch row's worker)
    session, size, precision = open_worker_session(spec)
    loaded_kib = _proc_status_kib("VmRSS")
    load_hwm_kib = _proc_status_kib("VmHWM")
    load_peak_kib = _maxrss_kib()
    hwm_reset = _reset_hwm()
    for _ in range(spec["warmup"]):
        session.run(x)
    latencies = []
    for _ in range(spec["runs"]):
        t0 = time.perf_counter()
        session.run(x)
        latencies.append((time.perf_counter() - t0) * 1e3)
    if hwm_reset and loaded_kib is not None and load_hwm_kib is not None:
        runs_hwm_kib = _proc_status_kib("VmHWM")
        activation_kib = max(runs_hwm_kib - loaded_kib, 0)
        # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's RSS (the pre-exec address space is
        # folded into it), so it would report the bench process's own peak.
        peak_kib = max(load_hwm_kib, runs_hwm_kib)
    else:  # no resettable high-water mark: what the runs added on top of the peak of loading (a lower bound)
        peak_kib = _maxrss_kib()
        activation_kib = max(peak_kib - load_peak_kib, 0)
    return {"latencies_ms": latencies, "peak_rss_mib": peak_kib / 1024,
            "loaded_rss_mib": (loaded_kib if loaded_kib is not None else load_peak_kib) / 1024,
            "baseline_rss_mib": baseline_kib / 1024 if baseline_kib is not None else None,
            "activation_mib": activation_kib / 1024, "model_bytes": size, "inference_precision": precision,
            "device": getattr(session, "device", "cpu"), "exact_activation": hwm_reset}


def worker_main(payload: str) -> int:
    try:
        spec = json.loads(payload)
        if spec.get("profile"):   # biformer-bench --profile: the runtime's own per-op profiler (profilers.py)
            from .profilers import profile_worker
            result = profile_worker(spec)
        else:
            result = run_worker(spec)
        code = 0
    except Exception as exc:  # noqa: BLE001 - reported to the parent as this configuration's failure
        result = {"error": f"{type(exc).__name__}: {first_line(exc)}".rstrip(": ")}
        code = 1
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return code


def measure(spec: dict) -> dict:
    """Run one configuration in a fresh interpreter: its result, or ``{"error": one line}``."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", __name__, json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER):])
    if result is None:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        result = {"error": f"worker exited with {proc.returncode}" + (f": {tail[-1][:200]}" if tail else "")}
    return result


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m biformer_edge.bench.worker '<json spec>'", file=sys.stderr)
        sys.exit(2)
    sys.exit(worker_main(sys.argv[1]))
