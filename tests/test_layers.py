"""The layers hold at run time: loading and embedding import no fairseq and no training layer."""
import json
import subprocess
import sys

import pytest

TRAINING_LAYER = ("fairseq", "fairseq_cli", "hydra", "one_peace.fairseq_glue", "one_peace.tasks",
                  "one_peace.criterions", "one_peace.optim")

CHILD = r"""
import json, sys
from one_peace import from_pretrained
checkpoint, model_type, bpe_dir, image = sys.argv[1:5]
hub = from_pretrained(checkpoint, model_type=model_type, device="cpu", bpe_dir=bpe_dir)
if model_type == "one_peace_retrieval":
    out = hub.extract_image_features(hub.process_image([image]))
else:
    out = hub.extract_vl_features(hub.process_image([image]), hub.process_text(["a dog"]))
print(json.dumps({"shape": list(out.shape), "finite": bool(out.isfinite().all()), "modules": sorted(sys.modules)}))
"""


def _run(checkpoint, model_type, bpe_dir, image):
    res = subprocess.run([sys.executable, "-c", CHILD, str(checkpoint), model_type, bpe_dir, str(image)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _training_modules(modules):
    return [m for m in modules if any(m == t or m.startswith(t + ".") for t in TRAINING_LAYER)]


def test_official_checkpoint_embeds_without_fairseq(retrieval_checkpoint, fixture_bpe_dir, media_dir):
    out = _run(retrieval_checkpoint, "one_peace_retrieval", fixture_bpe_dir, media_dir / "dog.JPEG")
    assert out["finite"] and out["shape"][0] == 1
    assert _training_modules(out["modules"]) == []


def test_classification_checkpoint_runs_without_fairseq(fixtures_dir, fixture_bpe_dir, media_dir):
    out = _run(fixtures_dir / "classify_vl_checkpoint.pt", "one_peace_classify", fixture_bpe_dir,
               media_dir / "dog.JPEG")
    assert out["finite"] and out["shape"][0] == 1
    assert _training_modules(out["modules"]) == []


def test_old_hub_import_path_names_the_new_one():
    with pytest.raises(ImportError, match="from one_peace import from_pretrained"):
        from one_peace.models import from_pretrained  # noqa: F401
