"""The user dir and the package register every official name exactly once."""
import argparse
import importlib

import pytest
import torch


def test_user_dir_and_package_import_register_once(user_dir):
    from fairseq import utils
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY
    from fairseq.tasks import TASK_REGISTRY

    # a second user-dir import and a package import must not re-register (fairseq would raise)
    utils.import_user_module(argparse.Namespace(user_dir=user_dir))
    importlib.import_module("one_peace.user_src.registry")
    for name in ("one_peace_retrieval", "one_peace_classify", "one_peace_pretrain"):
        assert name in MODEL_REGISTRY
        for size in ("tiny", "base", "4b"):
            assert f"{name}_{size}" in ARCH_MODEL_REGISTRY
    for name in ("base_task", "image_text_pretrain", "audio_text_pretrain"):
        assert name in TASK_REGISTRY
    for name in ("image_text_pretrain_loss", "audio_text_pretrain_loss"):
        assert name in CRITERION_REGISTRY


def test_fairseq_train_parser_sees_the_plugin(user_dir):
    from fairseq import options

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=[
        "--user-dir", user_dir, "--task", "image_text_pretrain", "--arch", "one_peace_pretrain_tiny",
        "--criterion", "image_text_pretrain_loss", "train.tsv", "--stage2-pretrain",
        "--dcl-text-alpha", "0.25", "--patch-image-size", "64"])
    assert args.arch == "one_peace_pretrain_tiny"
    assert args.dcl_text_alpha == 0.25 and args.stage2_pretrain and args.patch_image_size == 64
    assert args.data == "train.tsv"


@pytest.mark.parametrize("flags,expected", [([], True), (["--skip-bad-samples"], True),
                                            (["--skip-bad-samples", "false"], False),
                                            (["--skip-bad-samples=no"], False), (["--skip-bad-samples", "TRUE"], True)])
def test_boolean_task_options_take_values_as_documented(user_dir, flags, expected):
    from fairseq import options

    parser = options.get_training_parser(default_task="vggsound")
    args = options.parse_args_and_arch(parser, input_args=["train.tsv", "--task", "vggsound", "--arch",
                                                           "one_peace_classify_tiny", *flags])
    assert args.skip_bad_samples is expected and args.data == "train.tsv"


def test_boolean_task_option_rejects_other_values(user_dir):
    from fairseq import options

    parser = options.get_training_parser(default_task="vggsound")
    with pytest.raises(SystemExit):
        options.parse_args_and_arch(parser, input_args=["train.tsv", "--task", "vggsound", "--arch",
                                                        "one_peace_classify_tiny", "--skip-bad-samples", "maybe"])


def test_model_core_and_hub_leave_logging_alone_and_skip_fairseq_until_needed(tmp_path):
    """`import one_peace.models` does not import fairseq; loading the plugin does not change the
    caller's logging configuration (fairseq's import sets the root logger to DEBUG)."""
    import subprocess
    import sys

    code = (
        "import logging, sys\n"
        "root = logging.getLogger(); root.setLevel(logging.WARNING)\n"
        "import one_peace.models\n"
        "assert 'fairseq' not in sys.modules, 'one_peace.models imported fairseq'\n"
        "import one_peace.user_src.registry\n"
        "assert 'fairseq' in sys.modules\n"
        "assert root.level == logging.WARNING and root.handlers == [], (root.level, root.handlers)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_fairseq_train_flags_build_the_preset_model(user_dir, fixture_bpe_dir):
    """fairseq-train's nested model flags carry no defaults (unset ones arrive as None): the size
    preset and the dataclass defaults must still fill them (the audio conv stack vanished)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from one_peace.data_utils.feature_spec import parse_feature_encoder_spec
    from one_peace.models.architectures import TINY_SPEC

    parser = options.get_training_parser(default_task="audio_classify")
    args = options.parse_args_and_arch(parser, input_args=[
        "train.tsv", "--task", "audio_classify", "--num-classes", "3", "--arch", "one_peace_classify_tiny",
        "--bpe-dir", fixture_bpe_dir, "--cpu"])
    cfg = convert_namespace_to_omegaconf(args)
    model = tasks.setup_task(cfg.task).build_model(cfg.model)
    audio = model.encoder_wrapper.audio_adapter
    assert audio.embed_audios is not None and audio.spec == parse_feature_encoder_spec(TINY_SPEC)
    assert model.encoder_wrapper.fusion_model.layers[0].self_attn.embed_dim == 64


def test_pytorch_ddp_stops_at_start_and_cpu_processes_get_ddp_without_device_ids(user_dir, fixture_bpe_dir,
                                                                                 tmp_path):
    """fairseq's default --ddp-backend (pytorch_ddp) failed one step into a ONE-PEACE run (unused adapters and
    FFNs), and on CPU processes at once (a GPU index handed to DDP): it now stops at start naming the
    backends that work; a module that DDP can take gets it without device ids on the CPU."""
    import torch.distributed as dist
    from fairseq import models, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser(default_task="audio_classify")
    args = options.parse_args_and_arch(parser, input_args=[
        "train.tsv", "--task", "audio_classify", "--num-classes", "3", "--arch", "one_peace_classify_tiny",
        "--bpe-dir", fixture_bpe_dir, "--cpu"])
    model = tasks.setup_task(convert_namespace_to_omegaconf(args).task).build_model(
        convert_namespace_to_omegaconf(args).model)
    assert args.ddp_backend == "pytorch_ddp" and args.device_id == 0
    with pytest.raises(ValueError, match=r"--ddp-backend pytorch_ddp .* use --ddp-backend legacy_ddp .* or "
                                         r"fully_sharded"):
        models.DistributedFairseqModel(args, model, process_group=None, device=torch.device("cpu"))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        wrapped = models.DistributedFairseqModel(args, torch.nn.Linear(2, 2), process_group=None,
                                                 device=torch.device("cpu"))
        assert wrapped.module.device_ids is None
    finally:
        dist.destroy_process_group()


def test_shared_parameter_catalogue_ignores_empty_slots():
    """fairseq's trainer took every bias=None slot for one shared parameter (31 log lines per start);
    real sharing is still found."""
    from fairseq import trainer

    from one_peace.user_src import registry  # noqa: F401 - installs the compat shims

    model = torch.nn.Sequential(torch.nn.Conv1d(2, 2, 3, bias=False), torch.nn.Conv1d(2, 2, 3, bias=False),
                                torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    assert trainer._catalog_shared_params(model) == []
    model[3].weight = model[2].weight
    assert trainer._catalog_shared_params(model) == [["2.weight", "3.weight"]]


RETRIEVAL_CRITERIA = ["audio_text_retrieval_criterion", "image_text_retrieval_criterion",
                      "video_text_retrieval_criterion"]
FITTING = {
    "image_text_pretrain": ["image_text_pretrain_loss"], "audio_text_pretrain": ["audio_text_pretrain_loss"],
    "video_text_pretrain": ["video_text_pretrain_loss"], "aqa": ["hinge_loss"], "refcoco": ["refcoco_criterion"],
    "semantic_segmentation": ["segmentation_criterion"], "base_task": [],
    **{name: RETRIEVAL_CRITERIA for name in ("audio_text_retrieval", "image_text_retrieval", "video_text_retrieval")},
    **{name: ["classify_criterion"] for name in ("audio_classify", "vggsound", "vggsound_av", "fsd50k", "vqa",
                                                 "nlvr2", "image_classify")},
}


def _task(name, bpe_dir):
    from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY
    from omegaconf import OmegaConf

    return TASK_REGISTRY[name].setup_task(OmegaConf.structured(TASK_DATACLASS_REGISTRY[name](bpe_dir=bpe_dir)))


def test_every_task_is_trained_by_the_criteria_that_read_its_batches(user_dir, fixture_bpe_dir):
    """Each of our criteria checks its task when fairseq builds it (``task.build_criterion``): the ones
    listed train the task, every other criterion refuses it naming them."""
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.tasks import TASK_REGISTRY
    from omegaconf import OmegaConf

    ours = sorted(name for name, cls in TASK_REGISTRY.items() if cls.__module__.startswith("one_peace."))
    assert ours == sorted(FITTING)
    criteria = sorted(name for name, cls in CRITERION_REGISTRY.items() if cls.__module__.startswith("one_peace."))
    for task_name in ours:
        task = _task(task_name, fixture_bpe_dir)
        for criterion in criteria:
            cfg = OmegaConf.create({"_name": criterion})
            if criterion in FITTING[task_name]:
                assert task.build_criterion(cfg).task is task
                continue
            with pytest.raises(ValueError) as err:
                task.build_criterion(cfg)
            message = str(err.value)
            assert message.startswith(f"criterion {criterion} cannot train task {task_name}: it needs "), message
            advice = " or ".join(FITTING[task_name]) if FITTING[task_name] else "no ONE-PEACE criterion trains it"
            assert advice in message and "\n" not in message


def test_pretraining_criterion_of_another_modality_fails_when_built(user_dir, fixture_bpe_dir, tmp_path):
    """The report: --task image_text_pretrain --criterion audio_text_pretrain_loss ended in KeyError:
    'src_audios' at the first batch; fairseq-train now stops with one line naming both and the fit."""
    import subprocess
    import sys
    from pathlib import Path

    from one_peace.data_utils import synthetic

    synthetic.write_image_split(str(tmp_path), "train", 2, seed=1)
    cmd = [str(Path(sys.executable).parent / "fairseq-train"), str(tmp_path / "image_text_train.tsv"),
           "--user-dir", user_dir, "--task", "image_text_pretrain", "--arch", "one_peace_pretrain_tiny",
           "--criterion", "audio_text_pretrain_loss", "--bpe-dir", fixture_bpe_dir, "--batch-size", "2", "--cpu",
           "--ignore-unused-valid-subsets", "--save-dir", str(tmp_path / "ckpt")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode != 0
    errors = [line for line in (run.stdout + run.stderr).splitlines() if "error:" in line]
    assert errors == ["fairseq-train: error: criterion audio_text_pretrain_loss cannot train task "
                      "image_text_pretrain: it needs the audio-text pretraining task (audio_text_pretrain; task "
                      "PRETRAIN_MODALITY audio); for task image_text_pretrain use --criterion "
                      "image_text_pretrain_loss"], run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "KeyError" not in run.stderr


def test_fairseq_criteria_are_refused_by_our_tasks(user_dir, fixture_bpe_dir):
    from omegaconf import OmegaConf

    task = _task("vggsound", fixture_bpe_dir)
    with pytest.raises(ValueError, match=r"^criterion cross_entropy cannot train task vggsound: it is not a "
                                         r"ONE-PEACE criterion .*; for task vggsound use --criterion "
                                         r"classify_criterion$"):
        task.build_criterion(OmegaConf.create({"_name": "cross_entropy", "sentence_avg": False}))
