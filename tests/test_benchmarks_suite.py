"""The GPU suite (benchmarks.gpu_suite): its parts' commands and timeouts, stopping a part, and the summary
(benchmarks.suite_report) with the issue #12 verdicts (benchmarks.targets), on made-up and quick results."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import jax
import pytest

from benchmarks import gpu_suite, suite_report, targets

HAS_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "dsntnn"))

# ----------------------------------------------------------------------------------------------------
# Running the parts


def _gone(pid: int, wait_s: float = 10.0) -> bool:
    """Whether process `pid` has ended (or is a zombie) within `wait_s`."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_suite_stops_a_part_and_its_children_past_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_suite, "MIN_PART_S", 0)
    monkeypatch.setattr(gpu_suite, "KILL_GRACE_S", 3)
    pid_file = tmp_path / "grandchild"
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
            "print('started', flush=True)\n"
            "time.sleep(120)\n")
    env = dict(os.environ)
    with open(tmp_path / "suite.log", "w") as log:
        slow = gpu_suite.run_part(gpu_suite.Part("slow", [sys.executable, "-c", code], 8), log, env, 100)
        failing = gpu_suite.run_part(gpu_suite.Part("failing", [sys.executable, "-c", "exit(3)"], 30), log,
                                     env, 100)
        monkeypatch.setattr(gpu_suite, "MIN_PART_S", 20)
        late = gpu_suite.run_part(gpu_suite.Part("late", [sys.executable, "-c", "pass"], 30), log, env, 10)
    assert slow["status"].startswith("timeout: stopped after 8 s") and slow["wall_s"] < 30
    assert _gone(int(pid_file.read_text()))  # the part's own child went with it
    assert failing["status"] == "failed: exit status 3"
    assert late["status"].startswith("skipped") and late["returncode"] is None
    log_text = (tmp_path / "suite.log").read_text()
    assert "started" in log_text and "===== slow: timeout" in log_text and "===== late" not in log_text


def test_suite_child_environment_puts_the_repository_and_wheels_first(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = gpu_suite._child_env("/tmp/site")
    assert env["PYTHONPATH"] == f"{gpu_suite.REPO}:/tmp/site:/elsewhere"
    assert env["PYTHONUNBUFFERED"] == "1"


def _timing(library, config, dtype, ms, batch=1):
    return {"model": "resnet50@28", "input_size": 224, "dtype": dtype, "batch": batch, "heatmap": 28,
            "library": library, "config": config, "ms": ms, "ms_spread": 0.01,
            "images_per_s": batch / ms * 1e3, "first_call_s": 1.0}


def _step(library, config, dtype, rate):
    return {"library": library, "config": config, "dtype": dtype, "images_per_s": rate,
            "images_per_s_spread": 1.0, "ms_per_step": 32e3 / rate, "loss": 0.5, "warmup_s": 9.0}


def test_suite_summary_judges_the_issue_targets(tmp_path):
    compiled = "compile(reduce-overhead)+channels_last"
    legend = {"jit": "jax.jit of the eval-mode apply", "folded": "BatchNorm folded",
              "estimator": "PoseEstimator.predict"}
    inference_result = {"settings": {"models": ["resnet50@28"], "input_size": None, "repeats": 100,
                                     "warmup": 10, "jax_config_descriptions": legend},
                        "timings": [_timing("dsnt-jax", "jit", "float32", 0.9),
                                    _timing("dsnt-jax", "folded", "float32", 0.7),
                                    _timing("dsnt-jax", "estimator", "float32", 1.2),
                                    _timing("pytorch", "eager", "float32", 3.6),
                                    _timing("pytorch", compiled, "float32", 0.99),
                                    _timing("dsnt-jax", "jit", "bfloat16", 0.9),
                                    {**_timing("pytorch", compiled, "bfloat16", 1.0)}]}
    failed = inference_result["timings"][-1]  # a peer that failed has an error and no figures
    for key in ("ms", "ms_spread", "images_per_s", "first_call_s"):
        del failed[key]
    failed["error"] = "BackendCompilerFailed: boom"
    step_result = {"settings": {"model": "resnet50@28", "input_size": 224, "batch": 32, "repeats": 3,
                                "steps": 20, "warmup": 3},
                   "rows": [_step("dsnt-jax", "train", "float32", 1500.0),
                            _step("pytorch", "compile+channels_last", "float32", 1173.0),
                            _step("dsnt-jax", "train", "bfloat16", 2500.0),
                            _step("pytorch", "compile+channels_last", "bfloat16", 1365.0)]}
    workdir = tmp_path / "run"
    workdir.mkdir()
    records = [{"split": "train", "step": 20, "epoch": 0, "loss": 1.0, "images_per_s": 50.0},
               {"split": "train", "step": 40, "epoch": 0, "loss": 0.9, "images_per_s": 2400.0},
               {"split": "val", "step": 187, "epoch": 1, "total": 33.1},
               {"split": "train", "step": 200, "epoch": 1, "loss": 0.5, "images_per_s": 2450.0},
               {"split": "val", "step": 374, "epoch": 2, "total": 53.0}]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4')
    run = suite_report.train_run_result(str(workdir))  # the cut last line (a killed run) is skipped
    assert run["images_per_s"] == 2425.0 and [p["total"] for p in run["pckh"]] == [33.1, 53.0]
    parts = {"inference": {"result": inference_result}, "train_step": {"result": step_result},
             "train": {"result": run}}

    lines = suite_report.verdicts(parts, "gpu", "bfloat16")
    # The fastest dsnt-jax variant is judged, and named.
    expected = ["inference resnet50@28 batch 1 float32: dsnt-jax folded 0.700 ms (fastest of jit 0.900, "
                "folded 0.700, estimator 1.200 ms) → ≤ 0.8 ms met",
                f"  1.41× torch {compiled} (0.990 ms) → ≥ 1.2× met",
                "  bfloat16 jit 0.900 ms vs float32 folded 0.700 ms → bfloat16 never slower NOT met",
                "train step resnet50@28 batch 32 float32: dsnt-jax 1500.0 images/s",
                "  1.28× torch compile+channels_last (1173.0 images/s) → ≥ 1.3× NOT met",
                "train step resnet50@28 batch 32 bfloat16: dsnt-jax 2500.0 images/s",
                "  ≥ 2,400 images/s met",
                "  1.83× torch compile+channels_last (1365.0 images/s) → ≥ 1.5× met",
                "train.main 2425.0 images/s = 97.0 % of the step's 2500.0 → ≥ 95 % met"]
    assert lines == expected
    assert all("no verdict" in line for line in suite_report.verdicts(parts, "cpu", "bfloat16")
               if not line.startswith("  "))
    ratios = targets.inference_ratios(inference_result["timings"])
    assert [(r["jax_config"], r["peer"]) for r in ratios[:2]] == [("jit", "eager"), ("jit", compiled)]
    assert ratios[3]["ratio"] == pytest.approx(0.99 / 0.7)  # folded / compiled
    variants = suite_report.inference_variants(parts)  # recomputed: the part wrote none
    assert [(v["config"], v["baseline"]) for v in variants] == [("folded", "jit"), ("estimator", "folded")]
    assert [v["diff_ms"] for v in variants] == [pytest.approx(-0.2), pytest.approx(0.5)]

    summary = {"suite": {"command": ["python", "-m", "benchmarks.gpu_suite"], "quick": False,
                         "deadline_s": 480, "wall_s": 400.0, "note": ""},
               "environment": {"jax_platform": "gpu", "jax_device": "NVIDIA H200", "jax_device_count": 1,
                               "jax": "0.11.2", "host": "x86_64", "date": "today", "torch": "2.11"},
               "parts": [{"name": n, "status": "ok", "wall_s": 1.0, "timeout_s": 9.0,
                          "command": ["python", "-m", "train.main"], **parts.get(n, {})}
                         for n in ("env", "inference", "train_step", "train")],
               "verdicts": lines, "inference_variants": variants}
    markdown = suite_report.render_markdown(summary)
    for text in ("jax 0.11.2", "gpu (NVIDIA H200)", "| resnet50@28 | float32 | 1 | dsnt-jax | folded | "
                 "0.700 ± 0.010 | 1428.6 | 1.0 |", "| resnet50@28 | float32 | 1 | dsnt-jax | estimator | "
                 "1.200 ± 0.010 | 833.3 | 1.0 |", "unavailable: BackendCompilerFailed: boom",
                 "- dsnt-jax `folded`: BatchNorm folded\n- dsnt-jax `estimator`: PoseEstimator.predict",
                 "- variants resnet50@28 224 px float32 batch 1: jit 0.900 ms | folded 0.700 ms (-0.200 ms "
                 "vs jit) | estimator 1.200 ms (+0.500 ms vs folded)",
                 f"dsnt-jax folded / torch {compiled} speed **1.41×**", "33.1 → 53.0", expected[0],
                 expected[-1]):
        assert text in markdown, text
    # A part that wrote its own comparison is taken as it is.
    written = {"inference": {"result": {**inference_result, "variants": variants[:1]}}}
    assert suite_report.inference_variants(written) == variants[:1]


def test_variant_lines_need_two_variants_of_one_figure():
    timings = [_timing("dsnt-jax", "jit", "float32", 1.0), _timing("dsnt-jax", "jit", "float32", 20.0, 32),
               _timing("dsnt-jax", "estimator", "float32", 1.5), _timing("pytorch", "eager", "float32", 2.0)]
    # No folded figure: the estimator is set against the plain jit forward.
    assert targets.variant_lines(timings) == [
        "variants resnet50@28 224 px float32 batch 1: jit 1.000 ms | estimator 1.500 ms (+0.500 ms vs jit)"]
    assert targets.variant_overheads(timings[1:2]) == []


def test_suite_inference_part_times_every_dsnt_jax_variant_first_at_float32_batch_1():
    for argv, batches in ((["--out", "x"], "--batches=1,32"), (["--out", "x", "--quick"], "--batches=1,2")):
        args = gpu_suite._resolve(gpu_suite.build_parser().parse_args(argv))
        [part] = [p for p in gpu_suite.build_parts(args, "/scratch", "inductor", 16) if p.name == "inference"]
        assert "--jax=jit,folded,estimator" in part.command and batches in part.command
        # float32 (the targets' figures) is measured first: a part stopped at its timeout still has them.
        assert "--dtypes=float32,bfloat16" in part.command
        assert part.timeout_s == gpu_suite.TIMEOUTS["inference"][1 if args.quick else 0]
    # The default parts' timeouts fit the suite's ~8-minute deadline once env and train_step have run.
    full = {name: t for name, (t, _) in gpu_suite.TIMEOUTS.items()}
    assert full["env"] + full["inference"] + full["train_step"] <= 480


def test_gpu_suite_quick_writes_three_files(tmp_path):
    out = tmp_path / "out"
    summary = gpu_suite.main(["--quick", "--out", str(out), "--scratch", str(tmp_path / "scratch"),
                              "--parts", "inference,ops", "--inference-args=--torch=none --batches=1",
                              "--ops-args=--sizes=4 --batch=2 --points=2 --repeats=2"])
    assert sorted(os.listdir(out)) == ["suite.log", "summary.json", "summary.md"]
    assert [(p["name"], p["status"]) for p in summary["parts"]] == [
        ("env", "ok"), ("inference", "ok"), ("ops", "ok")]
    assert summary["environment"]["jax"] == jax.__version__
    written = json.loads((out / "summary.json").read_text())
    assert written["verdicts"] == summary["verdicts"]
    assert [(v["dtype"], v["config"], v["baseline"]) for v in written["inference_variants"]] == [
        ("float32", "folded", "jit"), ("float32", "estimator", "folded"), ("bfloat16", "folded", "jit"),
        ("bfloat16", "estimator", "folded")]
    markdown = (out / "summary.md").read_text()
    assert f"jax {jax.__version__}" in markdown and "## DSNTr loss forward + backward" in markdown
    for config in ("jit", "folded", "estimator"):
        assert f"| resnet18@7 | float32 | 1 | dsnt-jax | {config} |" in markdown
    assert "- variants resnet18@7 32 px float32 batch 1: jit " in markdown
    assert "inference: no dsnt-jax resnet50@28 batch-1 float32 figure: no verdict" in markdown
    if HAS_TORCH:
        assert "'eager' dynamo backend" in markdown and "| 4² | dsntnn | compile[backend=eager] |" in markdown
