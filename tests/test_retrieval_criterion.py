"""The retrieval criteria take the rows' modality from their task (``QUERY_MODALITY``, declared once, on
the task) and keep the official log names; the datasets are plain torch datasets the tasks hand to fairseq."""
import pytest
import torch
import torch.nn.functional as F
from helpers import BPE_ASSETS

AUDIO_SPEC = "[(8, 10, 5)] + [(8, 3, 2)]"


def make_task(config_cls, task_cls, **fields):
    from omegaconf import OmegaConf

    import one_peace.user_src.registry  # noqa: F401

    cfg = OmegaConf.structured(config_cls(bpe_dir=str(BPE_ASSETS), feature_encoder_spec=AUDIO_SPEC, **fields))
    return task_cls.setup_task(cfg)


def retrieval_tasks():
    from one_peace.tasks.audio_tasks.audio_text_retrieval import AudioTextRetrievalConfig, AudioTextRetrievalTask
    from one_peace.tasks.video_tasks.video_text_retrieval import VideoTextRetrievalConfig, VideoTextRetrievalTask
    from one_peace.tasks.vl_tasks.image_text_retrieval import ImageTextRetrievalConfig, ImageTextRetrievalTask

    return {"audio": (AudioTextRetrievalConfig, AudioTextRetrievalTask),
            "image": (ImageTextRetrievalConfig, ImageTextRetrievalTask),
            "video": (VideoTextRetrievalConfig, VideoTextRetrievalTask)}


class FakeModel:
    """Embeds whatever input it gets (its first 4 numbers per row); records the keys of every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, encoder_type=None, return_logit_scale=False, **inputs):
        if return_logit_scale:
            return torch.tensor(10.0)
        self.calls.append((encoder_type, sorted(inputs)))
        first = next(value for key, value in sorted(inputs.items()) if key.startswith("src_"))
        return F.normalize(first.float().flatten(1)[:, :4] + 0.5, dim=-1)


def batch(modality):
    torch.manual_seed(0)
    rows = {"audio": {"src_audios": torch.randn(3, 40), "audio_padding_masks": torch.zeros(3, 2, dtype=torch.bool)},
            "image": {"src_images": torch.randn(3, 3, 2, 2)},
            "video": {"src_videos": torch.randn(3, 2, 3, 2, 2)}}[modality]
    return {"net_input": dict(rows, src_tokens=torch.randint(4, 50, (3, 5))), "num_skipped": 0}


@pytest.mark.parametrize("modality,short", [("audio", "a"), ("image", "i"), ("video", "v")])
def test_criterion_embeds_the_tasks_modality_and_logs_the_official_names(modality, short):
    from fairseq import metrics

    from one_peace.criterions.retrieval_loss import RetrievalCriterion

    config_cls, task_cls = retrieval_tasks()[modality]
    task = make_task(config_cls, task_cls)
    assert task.QUERY_MODALITY == modality
    criterion = task.build_criterion(_criterion_cfg(modality))
    assert isinstance(criterion, RetrievalCriterion) and criterion.query_modality == modality
    model = FakeModel()
    sample = batch(modality)
    loss, sample_size, log = criterion(model, sample)
    # Each pass gets its modality's inputs only: the rows', then the captions'.
    row_keys = sorted(k for k in sample["net_input"] if k != "src_tokens")
    assert model.calls == [(modality, row_keys), ("text", ["src_tokens"])]
    assert sample_size == 1 and torch.isfinite(loss)
    assert {f"{short}2t_ncorrect", f"t2{short}_ncorrect"} <= set(log)
    with metrics.aggregate() as agg:
        type(criterion).reduce_metrics([log, log])
    assert {f"{short}2t_acc", f"t2{short}_acc"} <= set(agg.get_smoothed_values())


def _criterion_cfg(modality):
    from omegaconf import OmegaConf

    return OmegaConf.create({"_name": f"{modality}_text_retrieval_criterion", "label_smoothing": 0.0})


def test_any_retrieval_criterion_name_follows_the_task():
    """The registered names stay (configs name them), but the modality is the task's alone: the image
    criterion on the audio task embeds audio and logs a2t."""
    from one_peace.tasks.audio_tasks.audio_text_retrieval import AudioTextRetrievalConfig, AudioTextRetrievalTask

    task = make_task(AudioTextRetrievalConfig, AudioTextRetrievalTask)
    criterion = task.build_criterion(_criterion_cfg("image"))
    model = FakeModel()
    _, _, log = criterion(model, batch("audio"))
    assert model.calls[0][0] == "audio" and "a2t_ncorrect" in log and "i2t_ncorrect" not in log


def test_retrieval_criterion_on_another_task_says_so_when_built():
    from one_peace.criterions.retrieval_loss import ImageTextRetrievalCriterion
    from one_peace.tasks.audio_tasks.vggsound import VggsoundConfig, VggsoundTask

    task = make_task(VggsoundConfig, VggsoundTask, num_classes=3)
    with pytest.raises(ValueError, match="^criterion image_text_retrieval_criterion cannot train task vggsound: it "
                                         "needs a retrieval task .*; for task vggsound use --criterion "
                                         "classify_criterion$"):
        ImageTextRetrievalCriterion(task)
    criterion = ImageTextRetrievalCriterion(None)  # built without a task (its loss alone): checked when used
    criterion.task = task
    with pytest.raises(ValueError, match="needs a retrieval task .*VggsoundTask"):
        criterion(FakeModel(), batch("image"))


def test_reduced_scale_is_the_mean_over_batches_of_any_worker_count():
    """Logs summed over two workers (one log per step) and the zeroed log of fairseq's ignored dummy
    batch: the logged scale is still the per-batch mean, and the zeroed log adds nothing."""
    from fairseq import metrics

    from one_peace.criterions.retrieval_loss import RetrievalCriterion

    log = {"loss": 2.0, "nsentences": 3, "ntokens": 3, "sample_size": 1, "i2t_ncorrect": 1, "t2i_ncorrect": 2,
           "logit_scale_exp": 10.0, "num_skipped": 0}
    summed = {key: 2 * value for key, value in log.items()}
    zeroed = {key: 0 * value for key, value in log.items()}
    for logs in ([log], [summed], [log, zeroed], [summed, zeroed]):
        with metrics.aggregate() as agg:
            RetrievalCriterion.reduce_metrics(logs)
        values = agg.get_smoothed_values()
        assert values["logit_scale_exp"] == 10.0 and values["loss"] == 2.0 and values["i2t_acc"] == 33.333, logs


def test_datasets_are_plain_torch_datasets_the_tasks_hand_to_fairseq(tmp_path):
    from one_peace.data_utils.dataset import TSVDataset
    from one_peace.tasks.vl_tasks.image_text_retrieval import ImageTextRetrievalConfig, ImageTextRetrievalTask

    assert issubclass(TSVDataset, torch.utils.data.Dataset)
    assert not any(c.__module__.startswith("fairseq") for c in TSVDataset.__mro__)
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("image_id\timage\tcaption\n1\ta.png\ta cat\n2\tb.png\ta dog\n")
    task = make_task(ImageTextRetrievalConfig, ImageTextRetrievalTask, data=str(tsv), valid_data=str(tsv))
    task.load_dataset("train")
    dataset = task.dataset("train")  # fairseq's FairseqTask.dataset would refuse a non-FairseqDataset
    assert dataset is task.datasets["train"] and isinstance(dataset, torch.utils.data.Dataset)
    itr = task.get_batch_iterator(dataset, max_sentences=1)
    assert len(itr) == 2
    with pytest.raises(KeyError, match="Dataset not loaded: valid"):
        task.dataset("valid")
