"""The benchmark registry: unique names, runnable modules, and BENCHMARKS.md rendered from the committed JSON."""
import importlib
import json
import shutil

import pytest

from bench import run_all
from bench._benchmark import Args, Benchmark, Target, discover
from bench._common import file_names
from bench._environment import FILE_NAME, Environment
from bench._report import render

RESULTS = run_all.ROOT / "bench" / "results"


@pytest.fixture(scope="module")
def benchmarks():
    return discover()


def committed(benchmarks):
    return {b.name: json.loads((RESULTS / f"{b.name}.json").read_text()) for b in benchmarks}


def test_names_and_positions_are_unique_and_every_module_runs(benchmarks):
    names = [b.name for b in benchmarks]
    assert len(set(names)) == len(names) and FILE_NAME.removesuffix(".json") not in names
    assert len({b.order for b in benchmarks}) == len(benchmarks)
    for b in benchmarks:
        assert callable(importlib.import_module(b.module).main), b.module


def test_every_committed_result_renders_its_section_without_machine_paths(benchmarks):
    results = committed(benchmarks)
    text = render(benchmarks, results, {}, Environment.read(RESULTS))
    for b in benchmarks:
        assert "\n".join(b.section(file_names(results[b.name]))) in text, b.name
    assert "Not measured in this run" not in text
    assert "/.cache/" not in text and "/tmp/" not in text


def test_benchmarks_md_is_what_the_committed_json_renders(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    run_all.main(["--render-only", "--out", str(out)])
    assert out.read_text() == (run_all.ROOT / "BENCHMARKS.md").read_text(), \
        "BENCHMARKS.md is stale: regenerate it with python -m bench.run_all --render-only"


def test_a_benchmark_without_json_is_reported_as_not_measured(benchmarks, tmp_path):
    shutil.copytree(RESULTS, tmp_path, dirs_exist_ok=True)
    missing = next(b for b in benchmarks if b.summary is not None)
    (tmp_path / f"{missing.name}.json").unlink()
    out = tmp_path / "B.md"
    with pytest.raises(SystemExit) as exit_status:
        run_all.main(["--render-only", "--json-dir", str(tmp_path), "--out", str(out)])
    assert exit_status.value.code == 1
    text = out.read_text()
    assert f"## {missing.title}\n\n**Not measured in this run:**" in text
    assert f"| {missing.title} | - | - | not measured | {missing.target or '-'} | see below |" in text


FAKE_BENCH = '''
import argparse, json
p = argparse.ArgumentParser()
p.add_argument("--value", type=int)
p.add_argument("--out")
args = p.parse_args()
open(args.out, "w").write(json.dumps({"value": args.value, "threads": 1}))
'''


def fake(name, order):
    return Benchmark(name=name, title=f"Fake {name}", module="fake_bench", order=order, takes_device=False,
                     args=Args(full=f"--value {order}"), section=lambda r: [f"## Fake {name}", "", f"value {r['value']}"])


def test_only_and_reuse_json_rerun_the_named_and_record_what_the_run_measured(tmp_path, monkeypatch):
    (tmp_path / "fake_bench.py").write_text(FAKE_BENCH)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    benchmarks, json_dir = [fake("a", 1), fake("b", 2)], tmp_path / "results"

    def measure(*flags):
        json_dir.mkdir(exist_ok=True)
        return run_all.measure(benchmarks, run_all.parse_args(["--json-dir", str(json_dir), *flags]))

    env, results, errors = measure("--only", "a")
    assert results == {"a": {"value": 1, "threads": 1}} and errors == {"b": "skipped (--only)"} and env.measured == ["a"]
    env, results, errors = measure("--reuse-json")  # b has no JSON yet: it runs, a is reused
    assert set(results) == {"a", "b"} and not errors and env.measured == ["b"]
    assert Environment.read(json_dir) == env
    again, results, _ = measure("--reuse-json")  # nothing to run: the recorded environment describes the file
    assert again == env and set(results) == {"a", "b"}
    text = render(benchmarks, results, {}, again)
    assert "Results of a were measured by earlier runs" in text and "## Fake b\n\nvalue 2\n\nReproduce: `" in text


def test_targets_and_arguments():
    assert (str(Target(1.2)), str(Target(1 / 3, at_most=True)), str(Target(0.1, at_most=True, percent=True))) == \
        (">= 1.2x", "<= 0.33", "<= 10%")
    assert Target(1.2).verdict(1.3) == "meets target" and Target(1.2).verdict(1.1) == "**BELOW TARGET**"
    assert "inconclusive" in Target(1.2).verdict(1.3, [1.1, 1.4])
    assert Target(0.1, at_most=True).verdict(None) == "**ABOVE TARGET**"
    args = Args(full="--a 1", quick="--b 2", cuda_quick="--c 3")
    assert (args.select(False, True), args.select(True, True), args.select(True, False)) == (["--a", "1"], ["--c", "3"], ["--b", "2"])


def test_file_names_cut_absolute_paths_only():
    result = {"weights": "FID on cpu: /home/me/.cache/x/pt_inception.pth (sha256 ab)", "w": ["~/runs/a/b.yaml"],
              "space": "search_spaces/smoke.yaml", "note": "img/s, 1/5/15 min", "n": 3}
    assert file_names(result) == {"weights": "FID on cpu: pt_inception.pth (sha256 ab)", "w": ["b.yaml"],
                                  "space": "search_spaces/smoke.yaml", "note": "img/s, 1/5/15 min", "n": 3}
