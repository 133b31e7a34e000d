"""TSV reader: header-addressed columns, offset index, error reporting, path helpers."""
import os
import pickle

import pytest

from one_peace.data_utils.tsv import TSVReader, TSVRowError, expand_data_paths, resolve_media_path, select_epoch_file


def _write(path, text: str):
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def test_reads_rows_and_selects_columns(tmp_path):
    path = _write(tmp_path / "pairs.tsv",
                  "image_id\timage\tcaption\textra\n"
                  "1\timgs/a.jpg\ta dog\tx\n"
                  "2\t/abs/b.jpg\tun café ☕\ty\n")
    r = TSVReader(path, selected_cols="caption,image_id")
    assert len(r) == 2 and r.columns == ["caption", "image_id"]
    assert r[0] == {"caption": "a dog", "image_id": "1"}
    assert list(r[1].keys()) == ["caption", "image_id"] and r[1]["caption"] == "un café ☕"
    assert r[-1] == r[1]
    with pytest.raises(IndexError):
        r[2]
    full = TSVReader(path, selected_cols=None)
    assert full.columns == ["image_id", "image", "caption", "extra"]
    assert TSVReader(path, selected_cols=["image", "caption"])[0] == {"image": "imgs/a.jpg", "caption": "a dog"}
    assert [row["image_id"] for row in full] == ["1", "2"]


def test_unknown_column(tmp_path):
    path = _write(tmp_path / "d.tsv", "uniq_id\taudio\ttext\n1\ta.wav\thi\n")
    with pytest.raises(ValueError) as err:
        TSVReader(path, selected_cols="uniq_id,audio,text,duration")
    msg = str(err.value)
    assert "d.tsv" in msg and "'duration'" in msg and "uniq_id, audio, text" in msg


def test_row_errors_report_file_line_reason(tmp_path):
    path = _write(tmp_path / "bad.tsv", "a\tb\tc\n1\t2\t3\n\n4\t5\n6\t7\t8\t9\n")
    r = TSVReader(path)
    assert len(r) == 3 and r[0] == {"a": "1", "b": "2", "c": "3"}
    with pytest.raises(TSVRowError) as err:
        r[1]
    e = err.value
    assert isinstance(e, ValueError)
    assert e.path == path and e.row == 4 and "missing fields" in e.reason
    assert path in str(e) and "line 4" in str(e) and "missing fields" in str(e)
    with pytest.raises(TSVRowError, match="line 5.*extra fields"):
        r[2]
    with pytest.raises(TSVRowError):
        r.validate()
    # an empty last field is still a field
    assert TSVReader(_write(tmp_path / "e.tsv", "a\tb\n1\t\n"))[0] == {"a": "1", "b": ""}


def test_empty_and_header_only(tmp_path):
    for name, text in [("empty.tsv", ""), ("blank.tsv", "\n\n")]:
        with pytest.raises(ValueError, match=name):
            TSVReader(_write(tmp_path / name, text))
    for name, text in [("header.tsv", "a\tb\n"), ("header_blank.tsv", "a\tb\n\n\n")]:
        with pytest.raises(ValueError, match=f"{name}.*no data rows"):
            TSVReader(_write(tmp_path / name, text))
    with pytest.raises(FileNotFoundError, match="absent.tsv"):
        TSVReader(str(tmp_path / "absent.tsv"))


def test_crlf_bom_and_custom_separator(tmp_path):
    path = tmp_path / "win.tsv"
    path.write_bytes("\ufeffid\ttext\r\n1\thello\r\n2\tworld\r\n".encode("utf-8"))
    r = TSVReader(str(path), selected_cols="id,text")
    assert [r[0], r[1]] == [{"id": "1", "text": "hello"}, {"id": "2", "text": "world"}]
    c = TSVReader(_write(tmp_path / "c.csv", "x,y\n1,2\n"), separator=",")
    assert c[0] == {"x": "1", "y": "2"}


def test_large_file_random_access_and_pickle(tmp_path):
    n = 20000
    lines = ["uniq_id\taudio\ttext\tduration\n"] + [f"{i}\tclips/{i}.flac\tcaption number {i}\t{i % 10}.0\n"
                                                     for i in range(n)]
    path = _write(tmp_path / "big.tsv", "".join(lines))
    r = TSVReader(path, selected_cols="uniq_id,audio,text,duration")
    assert len(r) == n
    for i in (0, 1, 12345, n - 1, 7):
        assert r[i]["text"] == f"caption number {i}" and r.line_number(i) == i + 2
    r2 = pickle.loads(pickle.dumps(r))
    assert r2[999] == r[999]
    r.close()
    assert r[3]["uniq_id"] == "3"  # reopens after close


def test_resolve_media_path(tmp_path):
    tsv = str(tmp_path / "sub" / "d.tsv")
    assert resolve_media_path("/abs/x.jpg", "/root") == "/abs/x.jpg"
    assert resolve_media_path("x.jpg", "/root") == os.path.join("/root", "x.jpg")
    assert resolve_media_path("imgs/x.jpg", None, tsv_path=tsv) == str(tmp_path / "sub" / "imgs" / "x.jpg")
    assert resolve_media_path("x.jpg") == "x.jpg"
    (tmp_path / "sub").mkdir()
    r = TSVReader(_write(tmp_path / "sub" / "d.tsv", "image\nimgs/x.jpg\n"))
    assert r.resolve(r[0]["image"]) == str(tmp_path / "sub" / "imgs" / "x.jpg")
    r = TSVReader(str(tmp_path / "sub" / "d.tsv"), data_root=str(tmp_path / "media"))
    assert r.resolve(r[0]["image"]) == str(tmp_path / "media" / "imgs" / "x.jpg")


def test_expand_data_paths_and_epochs():
    assert expand_data_paths("a.tsv,b[1-3].tsv") == ["a.tsv", "b1.tsv", "b2.tsv", "b3.tsv"]
    assert expand_data_paths("part[08-10].tsv") == ["part08.tsv", "part09.tsv", "part10.tsv"]
    assert expand_data_paths("s[1-2]_[3-4].tsv") == ["s1_3.tsv", "s1_4.tsv", "s2_3.tsv", "s2_4.tsv"]
    assert expand_data_paths(" x.tsv , y.tsv ") == ["x.tsv", "y.tsv"]
    with pytest.raises(ValueError):
        expand_data_paths("b[3-1].tsv")
    with pytest.raises(ValueError):
        expand_data_paths(" , ")
    paths = expand_data_paths("a.tsv,b[1-2].tsv")
    assert [select_epoch_file(paths, e) for e in range(1, 8)] == ["a.tsv", "b1.tsv", "b2.tsv"] * 2 + ["a.tsv"]
    with pytest.raises(ValueError):
        select_epoch_file([], 1)
