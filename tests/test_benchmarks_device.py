"""The device scripts run here before they cost accelerator time: the GPU check on small cases
in interpret mode, and the sampler benchmark's device mode with the Pallas decode kernels and
its profile of the decode step."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[1]


def _run(args, tmp_path):
  result = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
                                            "PATH": "/usr/bin:/bin"})
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  return result


def test_gpu_check_passes_in_interpret_mode(tmp_path):
  out = tmp_path / "check.json"
  _run(["benchmarks/device/check_gpu.py", "--interpret", "--out", str(out)], tmp_path)
  results = json.loads(out.read_text())["results"]
  kernels = [r.get("kernel", "flash_attention") for r in results]
  assert kernels.count("decode_attention") == 2 and kernels.count("flash_attention") == 5
  assert [r.get("dq_atomic") for r in results].count(True) == 1
  assert all(r["passed"] for r in results)


def test_attention_benchmark_runs_in_interpret_mode(tmp_path):
  """`attention.py --quick`: ours (and with dq by atomics) against XLA on tiny shapes."""
  out = tmp_path / "attention.json"
  _run(["benchmarks/attention.py", "--quick", "--impls", "ours,ours_atomic,xla", "--lengths",
        "128", "--shapes", "1.5B", "--tiling", '{"backward_warps": 8}', "--out", str(out)],
       tmp_path)
  records = json.loads(out.read_text())["records"]
  assert [(r["impl"], r["packed"]) for r in records] == [
      (impl, packed) for packed in (False, True) for impl in ("ours", "ours_atomic", "xla")]
  assert all(r["fwdbwd_tflops"] > 0 and "error" not in r for r in records)
  tilings = {r["impl"]: r["tiling"] for r in records}
  assert tilings == {"ours": {"backward_warps": 8}, "xla": None,
                     "ours_atomic": {"backward_warps": 8, "dq_atomic": True}}


def test_sampler_device_mode_with_pallas_decode(tmp_path):
  out = tmp_path / "sampler.json"
  _run(["benchmarks/sampler.py", "--mode", "device", "--preset", "tiny", "--batch", "8",
        "--prompt", "32", "--new", "17", "--settings", "3", "--attention", "pallas",
        "--initial_cache", "16", "--profile", "--out", str(out)], tmp_path)
  records = json.loads(out.read_text())
  settings = [r for r in records if "setting" in r and "profile" not in r]
  assert [r["setting"] for r in settings] == ["greedy", "sampled_t0.7_p0.8", "greedy_groups_of_8"]
  assert all(r["attention"] == "pallas" and r["decode_step_ms"] > 0 for r in settings)
  profile = [r["profile"] for r in records if "profile" in r]
  assert len(profile) == 1 and profile[0]["kernels_per_step"] > 1
  assert profile[0]["busy_ms_per_step"] > 0 and len(profile[0]["top_kernels"]) > 1
