"""PRECISION (auto | bf16 | fp32) of the run scripts: bf16 by itself only where the hardware has it and the job is
measured faster in bf16 (models/precision.py); an explicit value wins; a bad one is one error line."""
import re
import subprocess
import sys

import pytest
import torch
import yaml
from e2e_helpers import BPE_DIR, REPO, documented_env

from one_peace.models import precision
from one_peace.models.precision import BF16_FASTER_ON_CPU, cpu_has_bf16_units, training_precision

# ---- the decision -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("units", [True, False])
@pytest.mark.parametrize("job", sorted(BF16_FASTER_ON_CPU))
def test_auto_on_cpu_is_bf16_only_with_the_units_and_a_measured_gain(monkeypatch, job, units):
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: units)
    expected = "bf16" if units and BF16_FASTER_ON_CPU[job] else "fp32"
    assert training_precision(job) == training_precision(job, "auto", "cpu") == expected


def test_the_measured_table():
    assert BF16_FASTER_ON_CPU["finetune"] is True  # base: a --bf16 step 2.13x the fp32 one (#28)
    # every job a run script asks about is in the table (a missing one would fail at the script's start)
    scripts = "\n".join(p.read_text() for p in (REPO / "run_scripts").rglob("*.sh"))
    asked = set(re.findall(r"(?:quickstart_precision|resolve_precision) ([a-z_]+)", scripts))
    assert {"finetune", "evaluate", "quickstart", "video_quickstart", "real_demo"} <= asked <= set(BF16_FASTER_ON_CPU)


@pytest.mark.parametrize("units", [True, False])
def test_explicit_precision_wins(monkeypatch, units):
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: units)
    monkeypatch.setattr(precision, "cuda_has_bf16", lambda: units)
    for job in BF16_FASTER_ON_CPU:
        for device in ("cpu", "cuda", "auto"):
            assert training_precision(job, "bf16", device) == "bf16"
            assert training_precision(job, "fp32", device) == "fp32"


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_a_gpu_follows_its_bf16_support(monkeypatch, supported):
    monkeypatch.setattr(precision, "cuda_has_bf16", lambda: supported)
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: False)
    expected = "bf16" if supported else "fp32"
    assert [training_precision(job, "auto", "cuda") for job in BF16_FASTER_ON_CPU] == [expected] * len(
        BF16_FASTER_ON_CPU)
    # device auto: the GPU when torch sees one, else the CPU rule
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_precision("quickstart", "auto", "auto") == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_precision("quickstart", "auto", "auto") == "fp32"


def test_bad_values_name_what_is_allowed():
    with pytest.raises(ValueError, match=r"PRECISION must be one of auto, bf16, fp32, got 'fp16'"):
        training_precision("finetune", "fp16")
    with pytest.raises(ValueError, match=r"unknown job 'pretrain'; known jobs: finetune, .*real_demo"):
        training_precision("pretrain")
    with pytest.raises(ValueError, match=r"device must be one of cpu, cuda, auto, got 'tpu'"):
        training_precision("finetune", device="tpu")


def test_cpu_probe_reads_torch_then_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert cpu_has_bf16_units()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert not cpu_has_bf16_units()
    # a torch without the probes: the flags Linux lists
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    cpuinfo = tmp_path / "cpuinfo"
    for flags, has in (("fpu avx512f amx_tile amx_bf16 amx_int8", True), ("fpu avx512f avx512_bf16", True),
                       ("fpu avx2 avx512f avx512_vnni", False)):
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        assert cpu_has_bf16_units(str(cpuinfo)) is has, flags
    assert cpu_has_bf16_units(str(tmp_path / "absent")) is False


def test_cli_prints_one_word_and_one_error_line(capsys):
    assert precision.main(["finetune", "--requested", "fp32", "--device", "cuda"]) == 0
    assert capsys.readouterr().out == "fp32\n"
    proc = subprocess.run([sys.executable, "-m", "one_peace.models.precision", "finetune", "--requested", "half"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "one-peace-precision: error: PRECISION must be one of auto, bf16, fp32, got 'half'"]


# ---- the run scripts ------------------------------------------------------------------------------------


def fake_tools(tmp_path, units=None, **tools):
    """An environment whose PYTHON is the project's interpreter behind a wrapper in tmp/bin, so the run
    scripts (which put PYTHON's directory first on PATH) find the fake ``tools`` there (name -> shell body,
    run with the arguments recorded in tmp/args).  ``units`` fixes what torch's CPU probes say."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for name, body in tools.items():
        (bin_dir / name).write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/args"\n{body}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = documented_env(PYTHON=str(bin_dir / "python"), PYTHONWARNINGS="ignore")
    env.pop("PRECISION", None)
    if units is not None:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(
            f"import torch.cpu\ntorch.cpu._is_amx_tile_supported = torch.cpu._is_avx512_bf16_supported = lambda: {units}\n")
        env["PYTHONPATH"] = str(site)
    return env


@pytest.mark.parametrize("requested,units,overrides", [
    ("fp32", None, True),
    (None, True, False),   # auto on a CPU with bf16 units: the yaml's bf16 stays
    (None, False, True),   # auto on a CPU without: fp32
])
def test_finetune_precision_overrides(tmp_path, requested, units, overrides):
    env = fake_tools(tmp_path, units, **{"one-peace-hydra-train": "exit 0"})
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("uniq_id\taudio\tlabel\n0\ta.wav\tdog\n")
    env.update(NUM_GPUS="0", TRAIN_TSV=str(tsv), VALID_TSV=str(tsv), **({"PRECISION": requested} if requested else {}))
    caller = ["common.log_interval=5", "++common.fp16=false"]
    proc = subprocess.run(["bash", str(REPO / "run_scripts/esc50/finetune.sh"), *caller],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "args").read_text().splitlines()
    fp32 = ["common.bf16=false", "common.memory_efficient_bf16=false"]
    assert all(a in args for a in fp32) is overrides and not any("bf16=true" in a for a in args), args
    assert args[-2:] == caller  # the caller's overrides come last and win; the message names theirs
    assert (f"[one_peace_train] precision: {'fp32' if overrides else 'bf16'} (PRECISION={requested or 'auto'}), "
            "then the overrides ++common.fp16=false\n") in proc.stderr


@pytest.mark.parametrize("requested,units,bf16", [
    (None, False, False),  # the script's bf16 default on a CPU without bf16 units: fp32
    (None, True, True),
    ("bf16", False, True),  # an explicit PRECISION wins
    ("fp32", True, False),
])
def test_evaluate_default_precision_on_cpu(tmp_path, requested, units, bf16):
    env = fake_tools(tmp_path, units, **{"one-peace-evaluate": "exit 0"})
    tsv = tmp_path / "test.tsv"
    tsv.write_text("uniq_id\taudio\tlabel\n")
    (tmp_path / "model.pt").write_bytes(b"")
    env.update(TEST_TSV=str(tsv), CHECKPOINT=str(tmp_path / "model.pt"), RESULTS_DIR=str(tmp_path / "results"),
               **({"PRECISION": requested} if requested else {}))
    proc = subprocess.run(["bash", str(REPO / "run_scripts/esc50/evaluate.sh"), "--cpu"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "args").read_text().splitlines()
    assert ("--bf16" in args) is bf16 and "--cpu" in args, args


def test_evaluate_bad_precision_stops_before_the_evaluator(tmp_path):
    env = fake_tools(tmp_path, **{"one-peace-evaluate": "exit 0"})
    (tmp_path / "model.pt").write_bytes(b"")
    env.update(TEST_TSV=str(tmp_path / "model.pt"), CHECKPOINT=str(tmp_path / "model.pt"), PRECISION="double")
    proc = subprocess.run(["bash", str(REPO / "run_scripts/esc50/evaluate.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "error: PRECISION must be auto, bf16, fp16 or fp32, got double" in proc.stderr
    assert not (tmp_path / "args").exists()


@pytest.mark.parametrize("script,data", [
    ("esc50/zero_shot_evaluate.sh", dict(ESC50_TSV="model.pt", ESC50_LABELS="model.pt")),
    ("image_text_retrieval/zero_shot_evaluate.sh", dict(TEST_TSV="model.pt", TEST_FILE="model.pt")),
    ("video_text_retrieval/zero_shot_evaluate.sh", dict(TEST_TSV="model.pt", TEST_FILE="model.pt")),
])
def test_zero_shot_scripts_stop_on_a_bad_precision(tmp_path, script, data):
    """Their flags were resolved inside $(...), whose error did not stop the script: it evaluated in fp32."""
    env = fake_tools(tmp_path, **{"one-peace-evaluate": "exit 0"})
    (tmp_path / "model.pt").write_bytes(b"")
    env.update({k: str(tmp_path / v) for k, v in data.items()}, CHECKPOINT=str(tmp_path / "model.pt"),
               DATASET="flickr30k", PRECISION="double")
    proc = subprocess.run(["bash", str(REPO / "run_scripts" / script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "error: PRECISION must be auto, bf16, fp16 or fp32, got double" in proc.stderr
    assert not (tmp_path / "args").exists()
    env["PRECISION"] = "auto"  # and a good value still reaches the evaluator
    proc = subprocess.run(["bash", str(REPO / "run_scripts" / script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and (tmp_path / "args").exists(), proc.stderr[-2000:]


def run_quickstart(tmp_path, work, requested):
    """quickstart.sh on a stand-in prepared dataset up to its first training command (a fake one that fails):
    the configs are written by then."""
    env = fake_tools(tmp_path / requested, **{"fairseq-hydra-train": "exit 3"})
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for name in ("image_text_train.tsv", "image_text_valid.tsv", "audio_text_train.tsv", "audio_text_valid.tsv",
                 "image_captions.json", "audio_captions.json"):
        (data / name).write_text("")
    env.update(QUICKSTART_DATA=str(data), ONE_PEACE_BPE_DIR=str(BPE_DIR), PRECISION=requested)
    return subprocess.run(["bash", str(REPO / "run_scripts/quickstart.sh"), str(work), "--fast"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)


def test_quickstart_writes_bf16_into_both_stages_only_when_chosen(tmp_path):
    work = tmp_path / "work"
    texts = {}
    for requested in ("bf16", "fp32", "auto"):
        (tmp_path / requested).mkdir()
        proc = run_quickstart(tmp_path, work, requested)
        assert proc.returncode == 3, proc.stderr[-2000:]  # the fake trainer's exit
        chosen = requested if requested != "auto" else training_precision("quickstart")
        stage1_line = [line for line in proc.stdout.splitlines() if "2/4 stage 1" in line]
        assert len(stage1_line) == 1 and f"64px, {chosen}; log" in stage1_line[0], proc.stdout
        texts[requested] = {stage: (work / "configs" / f"{stage}.yaml").read_text() for stage in ("stage1", "stage2")}
        for text in texts[requested].values():
            common = yaml.safe_load(text)["common"]
            assert common.get("bf16", False) is (chosen == "bf16") and common["cpu"] is True
    # bf16 adds that one line and changes nothing else
    for stage in ("stage1", "stage2"):
        assert texts["bf16"][stage].replace("  cpu: true\n  bf16: true\n", "  cpu: true\n") == texts["fp32"][stage]
    assert texts["auto"] == texts[training_precision("quickstart")]


@pytest.mark.parametrize("script", ["quickstart.sh", "video_quickstart.sh", "real_demo.sh"])
def test_bad_precision_stops_the_quickstarts_at_once(tmp_path, script):
    env = fake_tools(tmp_path, **{"fairseq-hydra-train": "exit 3"})
    media = tmp_path / "media"
    (media / "tuxpaint").mkdir(parents=True)
    (media / "tuxpaint" / "stamps.tsv").write_text("")  # so real_demo.sh would never fetch
    env.update(PRECISION="fp8", ONE_PEACE_BPE_DIR=str(BPE_DIR), ONE_PEACE_REAL_MEDIA=str(media))
    proc = subprocess.run(["bash", str(REPO / "run_scripts" / script), str(tmp_path / "work")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "one-peace-precision: error: PRECISION must be one of auto, bf16, fp32, got 'fp8'"], proc.stderr
    assert not any((tmp_path / "work").iterdir()) and not (tmp_path / "args").exists()


def test_video_quickstart_writes_bf16(tmp_path):
    """The video stage on stand-ins of the quickstart's checkpoints, up to its (fake) training command."""
    work = tmp_path / "work"
    for stage in ("stage1", "stage2"):
        (work / stage).mkdir(parents=True)
        (work / stage / "checkpoint_last.pt").write_bytes(b"")
    (work / "data").mkdir()
    (work / "data" / "image_captions.json").write_text('["a red circle moving left"]')
    env = fake_tools(tmp_path, **{"fairseq-hydra-train": "exit 3"})
    env.update(PRECISION="bf16", ONE_PEACE_BPE_DIR=str(BPE_DIR))
    proc = subprocess.run(["bash", str(REPO / "run_scripts/video_quickstart.sh"), str(work), "--fast"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert re.search(r"3/4 video-text pretraining .*64px, bf16; log", proc.stdout), proc.stdout
    config = yaml.safe_load((work / "configs" / "video.yaml").read_text())
    assert config["common"]["bf16"] is True and config["task"]["_name"] == "video_text_pretrain"


def test_bf16_asked_for_on_a_cpu_without_bf16_units_is_warned_about(monkeypatch, caplog):
    from one_peace.models import precision

    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: False)
    with caplog.at_level("WARNING", logger=precision.__name__):
        assert training_precision("finetune", "bf16") == "bf16"  # an explicit choice still wins
        assert training_precision("finetune", "auto") == "fp32"
        assert training_precision("finetune", "fp32") == "fp32"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "PRECISION=bf16 (finetune)" in messages[0] and "100x slower" in messages[0]
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: True)
    caplog.clear()
    assert not precision.warn_if_bf16_is_slow_here("anything") and not caplog.records


def test_the_hub_warns_about_bf16_on_a_cpu_without_bf16_units(monkeypatch, caplog, tmp_path):
    from one_peace.hub import interface
    from one_peace.models import precision

    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: False)
    with caplog.at_level("WARNING", logger=precision.__name__), pytest.raises(FileNotFoundError):
        interface.from_pretrained(str(tmp_path / "absent.pt"), device="cpu", dtype="bfloat16")
    assert any("from_pretrained(dtype='bfloat16', device='cpu')" in r.getMessage() for r in caplog.records)
