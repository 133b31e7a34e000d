"""VQAv2 questions + annotations -> the ``vqa`` TSV (soft scores) and the answer vocabulary.

    python run_scripts/vqa/convert_vqa.py --questions v2_OpenEnded_mscoco_train2014_questions.json \
        --annotations v2_mscoco_train2014_annotations.json --image-dir coco/train2014 \
        --image-name COCO_train2014_{image_id:012d}.jpg --out $VQA_DIR/vqa_train.tsv --write-answers $VQA_DIR/answers.json

* The answer vocabulary (``--write-answers``): the ``--top-answers`` (3129) most frequent
  ``multiple_choice_answer`` values of the given annotations, as JSON ``{class id: answer}``.
  Later splits reuse it with ``--answers answers.json``.
* ``refs`` of a question: every vocabulary answer given by the ten annotators, with the official
  score ``min(1, matches / 3)``, as ``answer|!+class_id|!+score`` joined by ``&&``.
* Without ``--annotations`` (test-dev / test-std) ``refs`` is empty; evaluation then writes the
  server's submission file.
Answers are compared lower-cased and stripped (the VQA normaliser's punctuation and number rules
are not applied).
"""
import argparse
import collections
import json
import os
import sys


def norm(answer: str) -> str:
    return " ".join(str(answer).lower().split())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", required=True)
    parser.add_argument("--annotations", help="omit for the unlabelled test splits")
    parser.add_argument("--image-dir", required=True)
    parser.add_argument("--image-name", default="COCO_train2014_{image_id:012d}.jpg")
    parser.add_argument("--out", required=True, help="output TSV")
    parser.add_argument("--answers", help="existing answer vocabulary (JSON {class id: answer})")
    parser.add_argument("--write-answers", help="build the vocabulary from these annotations and write it here")
    parser.add_argument("--top-answers", type=int, default=3129)
    args = parser.parse_args(argv)
    with open(args.questions, encoding="utf-8") as fh:
        questions = json.load(fh)["questions"]
    annotations = {}
    if args.annotations:
        with open(args.annotations, encoding="utf-8") as fh:
            annotations = {a["question_id"]: a for a in json.load(fh)["annotations"]}
    if args.write_answers:
        if not annotations:
            sys.exit("--write-answers needs --annotations")
        counts = collections.Counter(norm(a["multiple_choice_answer"]) for a in annotations.values())
        vocabulary = [answer for answer, _ in counts.most_common(args.top_answers)]
        with open(args.write_answers, "w", encoding="utf-8") as fh:
            json.dump({str(i): a for i, a in enumerate(vocabulary)}, fh)
    elif args.answers:
        with open(args.answers, encoding="utf-8") as fh:
            vocabulary = [a for _, a in sorted(json.load(fh).items(), key=lambda kv: int(kv[0]))]
    else:
        sys.exit("give --answers (existing vocabulary) or --write-answers (build it)")
    index = {a: i for i, a in enumerate(vocabulary)}
    rows, missing = [], 0
    for q in questions:
        path = os.path.join(args.image_dir, args.image_name.format(image_id=q["image_id"]))
        if not os.path.isfile(path):
            missing += 1
            continue
        refs = ""
        if q["question_id"] in annotations:
            matches = collections.Counter(norm(a["answer"]) for a in annotations[q["question_id"]]["answers"])
            items = [f"{a}|!+{index[a]}|!+{min(1.0, n / 3):.6g}" for a, n in matches.items() if a in index]
            refs = "&&".join(items)
        rows.append((q["question_id"], path, " ".join(q["question"].split()), refs))
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write("uniq_id\timage\tquestion\trefs\n")
        for row in rows:
            fh.write("\t".join(str(v) for v in row) + "\n")
    print(f"{len(rows)} questions -> {args.out} ({missing} without an image skipped; vocabulary {len(vocabulary)})")


if __name__ == "__main__":
    main()
