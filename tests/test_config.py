"""Config and device-profile validation: each bad input gets one error naming the thing and the fix."""

import pytest

from harness.config import cpuinfo_flags, load_target, parse_config, parse_method, x86_target_from_flags
from harness.errors import HarnessError

BASE = {"run": {"target": "local"}, "models": [{"name": "ffn-768"}]}


def test_sparsity_out_of_range_is_refused():
    for bad in (1.0, -0.1, 1.5, "0.5", True):
        with pytest.raises(HarnessError, match=r"outside \[0, 1\)"):
            parse_config({**BASE, "sparsify": {"levels": [0, bad]}})


def test_unknown_target_lists_known_ones():
    with pytest.raises(HarnessError, match=r"unknown target 'pi9'; known: .*local"):
        parse_config({**BASE, "run": {"target": "pi9"}})
    with pytest.raises(HarnessError, match="known: .*local"):
        load_target("pi9")


def test_unknown_method_and_model_and_key():
    with pytest.raises(HarnessError, match="unknown method 'random'"):
        parse_method("random")
    assert parse_method("block:4x4").block == (4, 4)
    with pytest.raises(HarnessError, match="unknown built-in model 'resnet'; known: digits-mlp, ffn-768"):
        parse_config({"models": [{"name": "resnet"}]})
    with pytest.raises(HarnessError, match="unknown key"):
        parse_config({**BASE, "measure": {"min_run": 3}})


def test_meter_command_is_a_list_of_strings():
    cfg = parse_config({**BASE, "measure": {"meter_command": ["python3", "/home/pi/read_meter.py"]}})
    assert cfg.measure.meter_command == ("python3", "/home/pi/read_meter.py")
    assert parse_config(BASE).measure.meter_command == ()
    for bad in ("python3 read_meter.py", [], ["python3", 3], [""]):
        with pytest.raises(HarnessError, match=r"\[measure\].meter_command must be a command as a list of strings"):
            parse_config({**BASE, "measure": {"meter_command": bad}})


def test_levels_sorted_and_deduplicated():
    cfg = parse_config({**BASE, "sparsify": {"levels": [0.9, 0, 0.5, 0.9]}})
    assert cfg.sparsify.levels == (0.0, 0.5, 0.9)


def test_x86_target_from_cpuinfo_flags():
    avx2 = {"sse4_1", "sse4_2", "ssse3", "popcnt", "avx", "avx2", "bmi1", "bmi2", "fma", "f16c", "movbe"}
    t = x86_target_from_flags(avx2)
    assert t["mcpu"] == "x86-64-v3" and "+avx2" in t["mattr"] and "+avx512f" not in t["mattr"]
    t = x86_target_from_flags(avx2 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})
    assert t["mcpu"] == "x86-64-v4" and "+avx512f" in t["mattr"]
    assert x86_target_from_flags(set())["mcpu"] == "x86-64"
    assert "fpu" in cpuinfo_flags("processor : 0\nflags\t\t: fpu vme avx\n")
    assert "neon" in cpuinfo_flags("Features\t: fp asimd neon\n")


def test_local_profile_resolves_from_cpuinfo():
    profile = load_target("local")
    assert profile.tvm_target["kind"] == "llvm"
    assert profile.tvm_target["mcpu"] != "from-cpuinfo"
    assert profile.tvm_target["mtriple"] == "x86_64-linux-gnu"


def test_compare_peers_default_off_and_unknown():
    assert parse_config(BASE).compare.peers == ("onnxruntime",)  # on by default (skipped where not installed)
    assert parse_config({**BASE, "compare": {"peers": []}}).compare.peers == ()
    assert parse_config({**BASE, "compare": {"peers": ["onnxruntime", "onnxruntime"]}}).compare.peers == \
        ("onnxruntime",)
    with pytest.raises(HarnessError, match=r"\[compare\].peers: unknown peer 'tflite'; known: onnxruntime"):
        parse_config({**BASE, "compare": {"peers": ["tflite"]}})
    with pytest.raises(HarnessError, match=r"\[compare\].peers must be a list"):
        parse_config({**BASE, "compare": {"peers": "onnxruntime"}})
    with pytest.raises(HarnessError, match=r"\[compare\]: unknown key\(s\) peer"):
        parse_config({**BASE, "compare": {"peer": ["onnxruntime"]}})


def test_measure_cpus_and_rounds_are_checked(tmp_path):
    from harness.config import parse_cpus

    assert parse_cpus("2-3") == (2, 3) and parse_cpus("0,2,4-5") == (0, 2, 4, 5) and parse_cpus([1, 0]) == (0, 1)
    for bad in ("3-1", "a", 1.5, "1,,x"):
        with pytest.raises(HarnessError, match=r"\[measure\].cpus: .* e.g.|\[measure\].cpus: .*give CPU numbers"):
            parse_cpus(bad)


def test_a_model_may_have_its_own_levels_and_methods(tmp_path):
    text = """
[sparsify]
levels = [0, 0.5, 0.9]
methods = ["unstructured"]
[[models]]
name = "digits-mlp"
levels = [0, 0.9]
methods = ["block:16x1"]
[[models]]
name = "ffn-768"
"""
    from harness.config import tomllib  # tomli before Python 3.11

    cfg = parse_config(tomllib.loads(text), base=tmp_path)
    mine, default = cfg.models
    assert mine.levels == (0.0, 0.9) and [m.name for m in mine.methods] == ["block"]
    assert default.levels is None and default.methods is None
    with pytest.raises(HarnessError, match=r"models\[0\] \(digits-mlp\): levels must be a non-empty list"):
        parse_config(tomllib.loads(text.replace("levels = [0, 0.9]", "levels = 0.9")), base=tmp_path)


def test_model_names_are_identifiers_never_paths(tmp_path):
    from harness.config import check_model_name

    for good in ("digits-mlp", "my_net.v2", "resnet18", "A-1"):
        assert check_model_name(good) == good
    for bad in ("../../x", "/abs/x", "a/b", ".hidden", "a..b", "", "a b", "x\\y", 5, None):
        with pytest.raises(HarnessError, match="is not an identifier"):
            check_model_name(bad)
    model = tmp_path / "m.onnx"
    with pytest.raises(HarnessError, match=r"models\[0\] \(\.\./x\): model name '\.\./x' is not an identifier"):
        parse_config({"models": [{"name": "../x", "path": str(model)}]}, base=tmp_path)


def test_measure_numbers_and_batch_bound():
    from harness.config import MAX_BATCH

    assert parse_config({**BASE, "measure": {"warmup_runs": 0, "min_s": 0, "extend_s": 0.0}}).measure.min_s == 0
    for key, bad in (("max_runs", 0), ("timeout_s", 0), ("min_runs", True), ("rounds", 1.5), ("ref_rtol", -1)):
        with pytest.raises(HarnessError, match=rf"\[measure\]\.{key} must be a"):
            parse_config({**BASE, "measure": {key: bad}})
    ok = parse_config({"models": [{"name": "ffn-768", "batch": [1, MAX_BATCH]}]})
    assert ok.models[0].batches == (1, MAX_BATCH)
    with pytest.raises(HarnessError, match=f"batch {MAX_BATCH + 1} is above the limit of {MAX_BATCH}"):
        parse_config({"models": [{"name": "ffn-768", "batch": MAX_BATCH + 1}]})


def test_batch_memory_bound_from_the_probe():
    from harness.device.preflight import check_batch_memory

    probe = {"mem_available_kb": 1024 * 1024}  # 1 GiB available: at most 512 MiB of inputs
    check_batch_memory("dev", probe, [("m", 64, 500 << 20)])
    check_batch_memory("dev", {}, [("m", 64, 1 << 40)])  # a device that does not say: no check
    with pytest.raises(HarnessError, match=r"model m at batch 64: its inputs alone need 1024 MiB, more than 50% of "
                                           r"the 1024 MiB device dev has available; use a batch of at most 32"):
        check_batch_memory("dev", probe, [("m", 64, 1 << 30)])
