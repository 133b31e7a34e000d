"""Compound queries (several texts and files, weights, --minus, more like this) in the CLI and the API:
the parsing rules, the combination arithmetic, and a sound plus the word "night" finding night scenes
that the sound alone ranks below day ones."""
import json
import os

import numpy as np
import pytest
from search_helpers import search_error, search_json
from search_query_helpers import SCENES, stored, vector_id
from test_search import post_file, post_json

from one_peace.search.compound import Term, combine, parse_api_terms, parse_cli_terms, query_line, split_weight

pytest_plugins = ["search_fixtures", "search_query_fixtures"]  # search_checkpoint, query_index, query_server


# ---- parsing and arithmetic -------------------------------------------------------------------
@pytest.mark.parametrize("spec, expected", [
    ("2:a dog", (2.0, "a dog")), ("0.5: a cat", (0.5, " a cat")), (".5:x", (0.5, "x")), ("1e1:x", (10.0, "x")),
    ("note: hi", (1.0, "note: hi")), ("C:\\x", (1.0, "C:\\x")), ("1:2:30 pm", (1.0, "2:30 pm")),
    ("2:30 pm", (2.0, "30 pm")), ("-1:x", (1.0, "-1:x")), ("a dog", (1.0, "a dog")),
])
def test_a_weight_is_a_plain_number_before_a_colon(spec, expected):
    assert split_weight(spec, "--text") == expected


@pytest.mark.parametrize("spec", ["0:a dog", "0.0:x", "1e999:x"])
def test_a_weight_of_zero_or_infinity_is_refused(spec):
    with pytest.raises(ValueError, match="weight must be a number above 0"):
        split_weight(spec, "--text")


def test_minus_is_a_file_when_it_names_one_else_a_text(tmp_path, monkeypatch):
    bark = tmp_path / "bark.wav"
    bark.write_bytes(b"RIFF")
    monkeypatch.chdir(tmp_path)
    terms = parse_cli_terms(texts=["2:a dog"], files=["bark.wav"],
                            minus=["bark.wav", "day", "0.5:text:bark.wav", "file:bark.wav", "3:bark.wav"])
    assert terms == [Term("text", "a dog", 2.0), Term("file", str(bark), 1.0), Term("file", str(bark), -1.0),
                     Term("text", "day", -1.0), Term("text", "bark.wav", -0.5), Term("file", str(bark), -1.0),
                     Term("file", str(bark), -3.0)]
    with pytest.raises(FileNotFoundError, match="no such file .*meow.wav .*text:meow.wav"):
        parse_cli_terms(texts=["x"], minus=["meow.wav"])  # looks like a file: a typo is not silently a text
    with pytest.raises(FileNotFoundError, match="--minus: query file not found"):
        parse_cli_terms(texts=["x"], minus=["file:gone"])
    with pytest.raises(FileNotFoundError, match="--file: query file not found: .*2:gone.wav"):
        parse_cli_terms(files=["2:2:gone.wav"])
    with pytest.raises(ValueError, match="--like 'x': give a vector id"):
        parse_cli_terms(like=["x"])


def test_combination_is_the_normalised_weighted_sum_of_normalised_terms():
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(8) * s for s in (3.0, 0.2, 1.0))  # unnormalised on purpose
    unit = [v / np.linalg.norm(v) for v in (a, b, c)]
    expected = 2 * unit[0] + unit[1] - 0.5 * unit[2]
    np.testing.assert_allclose(combine([a, b, c], [2, 1, -0.5]), expected / np.linalg.norm(expected), atol=1e-6)
    with pytest.raises(ValueError, match="at least one term to look for"):
        combine([a], [-1])
    with pytest.raises(ValueError, match="cancel out"):
        combine([a, 2 * a], [1, -1])


def test_api_terms_are_checked():
    uploads = {"f1": ("bark.wav", b"RIFF")}
    assert parse_api_terms([{"text": "a", "weight": 2}, {"id": 3, "minus": True}, {"upload": "f1"}], uploads) == \
        [Term("text", "a", 2.0), Term("id", 3, -1.0), Term("upload", ("bark.wav", b"RIFF"), 1.0)]
    for bad, message in (([{"text": "a", "id": 1}], "exactly one of"), ([{"text": "a", "weight": 0}], "above 0"),
                         ([{"upload": "f2"}], "no uploaded file in the form field 'f2'"),
                         ([{"id": "3"}], "id must be a vector id"), ({"text": "a"}, "terms must be a list"),
                         ([{"text": "a", "minus": "yes"}], "minus must be true or false")):
        with pytest.raises(ValueError, match=message):
            parse_api_terms(bad, uploads)


def test_query_line_names_each_term():
    query = {"terms": [{"text": "a dog", "weight": 2.0}, {"file": "/x/bark.wav", "modality": "audio", "weight": 1.0},
                       {"text": "day", "weight": -1.0}]}
    assert query_line(query) == "2 × text 'a dog' + audio file /x/bark.wav − text 'day'"
    assert query_line({"text": "a dog"}) == "text 'a dog'"


# ---- the CLI on the prepared set ----------------------------------------------------------------
def image_ranking(out):
    return [os.path.basename(h["path"]) for h in out["results"]["image"]]


def scene_order(out):
    return [name.split("_")[0] for name in image_ranking(out) if name.startswith(("night", "day"))]


def test_a_sound_plus_night_ranks_night_scenes_above_day_ones(query_index, capsys, search_checkpoint,
                                                             fixture_bpe_dir):
    from one_peace import from_pretrained

    index, library = query_index
    cow = library / "sounds" / "cow.flac"
    scenes = ["--folder", library / "scenes", "--modality", "image", "-k", 2 * SCENES]
    alone = search_json([index, "--file", cow, *scenes], capsys)
    # the prepared set: the sound alone puts every day scene above every night scene
    assert scene_order(alone) == ["day"] * SCENES + ["night"] * SCENES
    both = search_json([index, "--text", "2:night", "--file", cow, *scenes], capsys)
    assert both["query"] == {"terms": [{"text": "night", "weight": 2.0},
                                       {"file": str(cow), "modality": "audio", "weight": 1.0}]}
    order = scene_order(both)
    assert order[:3] == ["night"] * 3 and order.count("night") == SCENES
    # the scores are the arithmetic on the stored vectors: normalise(2 t + s) . x
    hub = from_pretrained(search_checkpoint, device="cpu", bpe_dir=fixture_bpe_dir)
    text = hub.extract_text_features(hub.process_text(["night"]))[0].numpy()
    sound = stored(index, "audio")[str(cow)]
    query = 2 * text / np.linalg.norm(text) + sound
    images = stored(index, "image")
    for hit in both["results"]["image"]:
        assert hit["score"] == pytest.approx(float(images[hit["path"]] @ query) / np.linalg.norm(query), abs=1e-5)
    # subtracting the sound again leaves the text: the same ranking as the text alone
    text_only = search_json([index, "--text", "night", *scenes], capsys)
    minus = search_json([index, "--text", "2:night", "--file", cow, "--minus", cow, *scenes], capsys)
    assert image_ranking(minus) == image_ranking(text_only)
    np.testing.assert_allclose([h["score"] for h in minus["results"]["image"]],
                               [h["score"] for h in text_only["results"]["image"]], atol=1e-5)
    assert minus["query"]["terms"][-1] == {"file": str(cow), "modality": "audio", "weight": -1.0}


def test_more_like_this_searches_with_a_stored_vector(query_index, capsys):
    index, library = query_index
    dog = library / "photos" / "dog.JPEG"
    out = search_json([index, "--like", vector_id(index, dog), "--modality", "image", "-k", "6"], capsys)
    assert out["query"] == {"id": vector_id(index, dog), "path": str(dog), "modality": "image"}
    top = image_ranking(out)
    assert set(top[:2]) == {"dog.JPEG", "dog_same.jpg"} and out["results"]["image"][0]["score"] == pytest.approx(1)
    assert {"dog_q10.jpg", "dog_half.png"} <= set(top)
    combined = search_json([index, "--like", f"2:{vector_id(index, dog)}", "--text", "night", "--modality", "image",
                            "-k", "1"], capsys)
    assert combined["query"]["terms"] == [{"text": "night", "weight": 1.0},
                                          {"id": vector_id(index, dog), "path": str(dog), "modality": "image",
                                           "weight": 2.0}]


def test_compound_mistakes_are_one_error_line(query_index, capsys, tmp_path):
    index, library = query_index
    cow = library / "sounds" / "cow.flac"
    assert "subtracted terms (--minus" in search_error([index, "--minus", "night"], capsys)
    assert "cancel out" in search_error([index, "--file", cow, "--minus", cow], capsys)
    assert "weight must be a number above 0" in search_error([index, "--text", "0:night"], capsys)
    assert "no vector with id 999999" in search_error([index, "--like", "999999"], capsys)
    assert "give a query" in search_error([index, "--modality", "image"], capsys)
    err = search_error([index, "--text", "night", "--minus", tmp_path / "missing.png"], capsys)
    assert "missing.png" in err


# ---- the API -------------------------------------------------------------------------------------
def test_api_compound_terms_by_json_and_by_upload(query_server, query_index, capsys):
    index, library = query_index
    cow = library / "sounds" / "cow.flac"
    scenes = ["--folder", library / "scenes", "--modality", "image", "-k", 2 * SCENES]
    cli = search_json([index, "--text", "2:night", "--file", cow, *scenes], capsys)
    expected = [(h["path"], h["score"]) for h in cli["results"]["image"]]
    status, out = post_json(query_server.url, {"terms": [{"text": "night", "weight": 2}, {"id": vector_id(index, cow)}],
                                               "modalities": ["image"], "k": 2 * SCENES,
                                               "folder": str(library / "scenes")})
    assert status == 200, out
    assert [(h["path"], pytest.approx(h["score"], abs=1e-5)) for h in out["results"]["image"]] == expected
    assert out["query"]["terms"][1] == {"id": vector_id(index, cow), "path": str(cow), "modality": "audio",
                                        "weight": 1.0}
    # the page's form: the sound uploaded as a term, the text with its weight
    status, data = post_file(query_server, cow, [("terms", json.dumps([{"text": "night", "weight": 2}])),
                                                 ("modalities", "image"), ("k", str(2 * SCENES)),
                                                 ("folder", str(library / "scenes"))])
    out = json.loads(data)
    assert status == 200, out
    assert [h["path"] for h in out["results"]["image"]] == [p for p, _ in expected]
    assert out["query"]["terms"] == [{"modality": "audio", "file": "cow.flac", "weight": 1.0},
                                     {"text": "night", "weight": 2.0}]
    status, out = post_json(query_server.url, {"terms": [{"text": "night", "minus": True}]})
    assert status == 400 and "at least one term to look for" in out["error"]
    status, out = post_json(query_server.url, {"text": "night", "colour": "red"})
    assert status == 400 and "unknown key 'colour'" in out["error"]
