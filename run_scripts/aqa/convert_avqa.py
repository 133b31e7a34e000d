"""AVQA question files -> ONE-PEACE ``aqa`` TSVs.

    python run_scripts/aqa/convert_avqa.py --qa train_qa.json --audio-dir /data/avqa/audio \
        --out /data/avqa/avqa_train.tsv

The AVQA release (Yang et al., ACM MM 2022) lists questions as JSON records with the video
name, the question, four candidate answers and the index of the correct one.  Field names
default to ``video_name``, ``question_text``, ``multi_choice``, ``answer`` and ``id`` and can
be changed with the ``--*-field`` options.  The audio track of each video must be extracted
to ``--audio-dir/{video_name}.wav`` beforehand (see docs/DATA.md).  Rows become
``uniq_id, audio, text, duration`` with text = ``question&&&a1&&&a2&&&a3&&&a4&&&k``.
"""
import argparse
import json
import os
import sys

SEPARATOR = "&&&"


def clean(text):
    return " ".join(str(text).replace(SEPARATOR, " ").split())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qa", required=True, help="AVQA question JSON (a list of records)")
    parser.add_argument("--audio-dir", required=True)
    parser.add_argument("--audio-name", default="{video}.wav")
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-choices", type=int, default=4)
    for name, default in (("id", "id"), ("video", "video_name"), ("question", "question_text"),
                          ("choices", "multi_choice"), ("answer", "answer")):
        parser.add_argument(f"--{name}-field", default=default)
    args = parser.parse_args(argv)
    with open(args.qa, encoding="utf-8") as fh:
        records = json.load(fh)
    rows, missing = [], 0
    for i, rec in enumerate(records):
        try:
            video, choices = rec[args.video_field], rec[args.choices_field]
            answer, question = int(rec[args.answer_field]), rec[args.question_field]
        except (KeyError, ValueError, TypeError) as err:
            sys.exit(f"error: {args.qa}: record {i} lacks a usable field ({err}); see the --*-field options")
        if len(choices) != args.num_choices or not 0 <= answer < args.num_choices:
            sys.exit(f"error: {args.qa}: record {i} has {len(choices)} choices / answer {answer}, "
                     f"expected {args.num_choices} choices")
        audio = os.path.abspath(os.path.join(args.audio_dir, args.audio_name.format(video=video)))
        if not os.path.isfile(audio):
            missing += 1
            continue
        text = SEPARATOR.join([clean(question)] + [clean(c) for c in choices] + [str(answer)])
        rows.append((rec.get(args.id_field, i), audio, text, 0))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:  # plain lines: the TSV reader does no unquoting
        for row in [("uniq_id", "audio", "text", "duration")] + rows:
            fh.write("\t".join(str(v) for v in row) + "\n")
    print(f"{len(rows)} questions ({missing} without audio) -> {args.out}")


if __name__ == "__main__":
    main()
