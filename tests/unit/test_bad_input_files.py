"""Bad input, part 2 (issue 32): every file revlens reads, every place it writes, every forward.

Each case asserts the error type, the culprit it names (file, line, field, checkpoint), that no
forward pass ran (a counting hook on the real shared bridge, where a model is involved) and that
nothing was half-written. The issue's rows, in order: adapter configs, prompt files (encoding, CSV
rows, ``messages``), ``HistoryStats.combine``, the spill dir, the CLI's ``--out`` (publish as a
whole, stale temporary folders, a probe write), forward errors named by checkpoint.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

import tiny
from revlens import History, HistoryStats, collect
from revlens.causal import ablation_study, logit_diff
from revlens.errors import (
    CacheError,
    CheckpointError,
    ConfigError,
    MetricError,
    OutputError,
    ProbeError,
    RevlensError,
)
from revlens.evaluate import evaluate
from revlens.loading import classify
from revlens.loading.lora import AdapterConfig
from revlens.probes import load_prompt_set

HERE = Path(__file__).resolve()


@contextmanager
def counting_forwards(lm):
    """Count forward passes of the real bridge (a pre-hook on its top module; always removed)."""
    calls = []
    handle = lm.bridge.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------ adapter_config.json
@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A real PEFT LoRA adapter on the tiny llama, and the llama dirs it sits on."""
    from unit.loading.lora_fixtures import make_adapter

    import families

    root = tmp_path_factory.mktemp("adapter")
    make_adapter("llama", root / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    return {
        "dir": root / "adapter",
        "base": families.checkpoint_dir("llama", "other"),
        "aligned": families.checkpoint_dir("llama", "base"),
        "root": root,
    }


def _with_config(adapter, tmp_path, content) -> Path:
    d = tmp_path / "bad-adapter"
    shutil.copytree(adapter["dir"], d)
    raw = json.loads((adapter["dir"] / "adapter_config.json").read_text())
    if isinstance(content, bytes):
        data = content
    elif callable(content):
        data = json.dumps(content(raw)).encode()
    else:
        data = json.dumps(content).encode()
    (d / "adapter_config.json").write_bytes(data)
    return d


def _drop(key):
    return lambda raw: {k: v for k, v in raw.items() if k != key}


def _set(**kv):
    return lambda raw: {**raw, **kv}


ADAPTER_CONFIGS = [
    ("list", [], "must hold a JSON object, got list"),
    ("string", "lora", "must hold a JSON object, got str"),
    ("number", 4, "must hold a JSON object, got int"),
    ("null", None, "must hold a JSON object, got NoneType"),
    ("no-r", _drop("r"), r"field 'r' \(the LoRA rank\) is missing"),
    ("r-0", _set(r=0), "field 'r' must be a positive integer, got 0"),
    ("r-negative", _set(r=-4), "field 'r' must be a positive integer, got -4"),
    ("r-string", _set(r="4"), "field 'r' must be a positive integer, got '4'"),
    ("r-float", _set(r=2.5), "field 'r' must be a positive integer, got 2.5"),
    ("r-bool", _set(r=True), "field 'r' must be a positive integer, got True"),
    ("r-null", _set(r=None), "field 'r' must be a positive integer, got None"),
    ("alpha-null", _set(lora_alpha=None), "field 'lora_alpha' must be a finite number, got None"),
    ("alpha-string", _set(lora_alpha="16"), "field 'lora_alpha' must be a finite number, got '16'"),
    (
        "alpha-nan",
        b'{"r": 4, "lora_alpha": NaN}',
        "field 'lora_alpha' must be a finite number, got nan",
    ),
    (
        "alpha-inf",
        b'{"r": 4, "lora_alpha": Infinity}',
        "field 'lora_alpha' must be a finite number, got inf",
    ),
    ("rank-pattern-list", _set(rank_pattern=[1]), "field 'rank_pattern' must be an object"),
    (
        "rank-pattern-0",
        _set(rank_pattern={"q_proj": 0}),
        r"field \"rank_pattern\['q_proj'\]\" must be a positive",
    ),
    (
        "alpha-pattern-str",
        _set(alpha_pattern={"q_proj": "x"}),
        r"alpha_pattern\['q_proj'\]\" must be a finite",
    ),
    (
        "modules-to-save-str",
        _set(modules_to_save="lm_head"),
        "field 'modules_to_save' must be a list",
    ),
    (
        "base-model-int",
        _set(base_model_name_or_path=3),
        "field 'base_model_name_or_path' must be a str",
    ),
    # found by the fuzz test: a list that is not of names, a list read as a true flag
    (
        "modules-to-save-not-names",
        _set(modules_to_save=[None, False]),
        "field 'modules_to_save' must list module",
    ),
    (
        "rslora-list",
        _set(use_rslora=[None, False]),
        "field 'use_rslora' must be true, false or null",
    ),
    ("dora-string", _set(use_dora="false"), "field 'use_dora' must be true, false or null"),
    (
        "not-json",
        b'{"r": 4,',
        r"is not valid JSON \(Expecting property name enclosed in double quotes at line 1",
    ),
    ("empty", b"", r"is not valid JSON \(Expecting value at line 1 column 1\)"),
    ("binary", b"\x00\xff\xfe", "cannot read adapter config"),
    ("deep", b"[" * 100_000, "is not valid JSON"),
]
_IDS = [c[0] for c in ADAPTER_CONFIGS]


@pytest.mark.parametrize(("case", "content", "match"), ADAPTER_CONFIGS, ids=_IDS)
def test_adapter_config_in_a_history_names_file_and_field(adapter, tmp_path, case, content, match):
    import families

    bad = _with_config(adapter, tmp_path, content)
    before = _files(bad)
    with pytest.raises(CheckpointError, match=match) as info:
        History.from_dirs(
            base=adapter["base"],
            aligned=adapter["aligned"],
            runs={"r": {1: bad}},
            tokenizer=families.tokenizer(),
        )
    assert str(bad / "adapter_config.json") in str(info.value)
    assert _files(bad) == before  # nothing written


@pytest.mark.parametrize(("case", "content", "match"), ADAPTER_CONFIGS, ids=_IDS)
def test_adapter_config_read_directly_names_file_and_field(adapter, tmp_path, case, content, match):
    bad = _with_config(adapter, tmp_path, content)
    with pytest.raises(CheckpointError, match=match) as info:
        classify(bad)
    assert "adapter_config.json" in str(info.value)
    with pytest.raises(CheckpointError, match=match):
        AdapterConfig.read(bad)


def test_a_valid_adapter_config_still_reads(adapter):
    cfg = AdapterConfig.read(adapter["dir"])
    assert cfg.r == 4 and cfg.lora_alpha == 8.0 and cfg.scaling("q_proj") == 2.0
    assert classify(adapter["dir"]).kind == "adapter"


# ------------------------------------------------------------------ prompt files
CHAT_LINE = '{"messages": [{"role": "user", "content": "w1"}]}\n'
PROMPT_FILES = [
    # name, bytes, match (the file name is checked for every case)
    ("latin1.txt", "caf\xe9 w1\n".encode("latin-1"), r"latin1.txt is not UTF-8 text \(byte 3"),
    (
        "latin1.jsonl",
        '{"prompt": "caf\xe9"}\n'.encode("latin-1"),
        r"latin1.jsonl is not UTF-8 text",
    ),
    (
        "latin1-messages.jsonl",
        CHAT_LINE.replace("w1", "caf\xe9").encode("latin-1"),
        "is not UTF-8 text",
    ),
    (
        "latin1.csv",
        "goal,target\ncaf\xe9,Sure\n".encode("latin-1"),
        r"latin1.csv is not UTF-8 text",
    ),
    (
        "unterminated.csv",
        b'goal,target\n"w1 w2,Sure\nw3,Sure\n',
        r"unterminated.csv:2: malformed CSV",
    ),
    (
        "unterminated-last.csv",
        b'goal,target\nw1,Sure\n"w2,Sure\n',
        r"unterminated-last.csv:3: malformed CSV",
    ),
    ("stray-quote.csv", b'goal,target\nw1,Sure\n"w2"x,Sure\n', r"stray-quote.csv:3: malformed CSV"),
    (
        "extra-field.csv",
        b"goal,target\nw1,Sure\nw2,Sure,x\n",
        r"extra-field.csv:3: a row of 3 field\(s\) under a header of 2",
    ),
    (
        "missing-field.csv",
        b"goal,target\nw1\n",
        r"missing-field.csv:2: a row of 1 field\(s\) under a header of 2",
    ),
    (
        "advbench-comma.csv",
        b"goal,target\nw1, w2,Sure\n",
        r"advbench-comma.csv:2: a row of 3 field",
    ),
    (
        "after-multiline.csv",
        b'goal,target\n"w1\nw2",Sure\nw3,Sure,x\n',
        r"after-multiline.csv:4: a row of 3",
    ),
    ("header-only.csv", b"goal,target\n", "header-only.csv holds no rows"),
    ("empty.csv", b"", "empty.csv holds no rows"),
    ("no-prompt-column.csv", b"a,b\nw1,w2\n", r"no-prompt-column.csv: no prompt column"),
    ("empty-prompt.csv", b"goal,target\n,Sure\n", r"empty-prompt.csv: row 1 has an empty prompt"),
    (
        "messages-string.jsonl",
        b'{"messages": "w1"}\n',
        r"messages-string.jsonl:1: expected an object",
    ),
    (
        "messages-role.jsonl",
        CHAT_LINE.replace("user", "wizard").encode(),
        r"messages-role.jsonl:1: message 0 has role",
    ),
    (
        "messages-content.jsonl",
        b'{"prompt": "w1"}\n{"messages": [{"role": "user", "content": 3}]}\n',
        r"messages-content.jsonl:2: ",
    ),
    ("messages-empty.jsonl", b'{"messages": []}\n', r"messages-empty.jsonl:1: "),
    (
        "messages-no-user.jsonl",
        b'{"messages": [{"role": "system", "content": "w1"}]}\n',
        r"messages-no-user.jsonl:1: ",
    ),
    ("messages-not-dicts.jsonl", b'{"messages": ["w1"]}\n', r"messages-not-dicts.jsonl:1: "),
    ("bad-json.jsonl", b'{"prompt": "w1"}\n{oops\n', r"bad-json.jsonl:2: not valid JSON"),
    ("deep.jsonl", b"[" * 100_000 + b"\n", r"deep.jsonl:1: not valid JSON"),
    ("no-key.jsonl", b'{"words": "w1"}\n', r"no-key.jsonl: lines need one of"),
    ("blank.txt", b"\n  \n", "blank.txt holds no prompts"),
    ("prompts.yaml", b"- w1\n", r"prompts.yaml: cannot tell the format from the suffix '.yaml'"),
]


@pytest.mark.parametrize(("name", "data", "match"), PROMPT_FILES, ids=[c[0] for c in PROMPT_FILES])
def test_prompt_files_name_file_and_line(tmp_path, name, data, match):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(ProbeError, match=match) as info:
        load_prompt_set(p, chat=name.startswith("messages") or "messages" in name)
    assert str(p) in str(info.value)
    assert _files(tmp_path) == {name: data}  # nothing written beside it


def test_an_unterminated_quote_is_never_merged_into_the_prompt(tmp_path):
    """The issue's silent misread: the target column became part of the prompt."""
    p = tmp_path / "advbench.csv"
    p.write_text('goal,target\n"w1 w2,Sure\n')
    with pytest.raises(ProbeError, match=r"advbench.csv:2"):
        load_prompt_set(p, chat=False)
    p.write_text(
        'goal,target\n"w1, w2",Sure\n"w3\nw4",Sure\n'
    )  # quoted commas and newlines are fine
    assert load_prompt_set(p, chat=False).prompts == ["w1, w2", "w3\nw4"]


@pytest.mark.parametrize("name", ["probes.txt", "probes.jsonl"])
def test_a_non_utf8_probe_file_through_collect_fails_before_any_forward(
    tiny_history, tiny_lm, tmp_path, name
):
    p = tmp_path / name
    p.write_bytes(b'{"text": "w1 \xff"}\n' if name.endswith("jsonl") else b"w1 \xff\n")
    with counting_forwards(tiny_lm) as calls, pytest.raises(ProbeError, match="is not UTF-8"):
        collect(
            tiny_history,
            load_prompt_set(p, chat=False) if name.endswith("txt") else p,
            model=tiny_lm,
            progress=False,
        )
    assert calls == []


# ------------------------------------------------------------------ statistics
@pytest.fixture(scope="module")
def part(tiny_history):
    return collect(tiny_history, tiny.PROMPTS, layers=[1], n_bootstrap=0, progress=False)


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        (lambda p: [p, "x"], "part 1 is a str, not a HistoryStats"),
        (lambda p: [p, None], "part 1 is a NoneType"),
        (lambda p: [3, p], "part 0 is a int"),
        (lambda p: [p, {"checkpoints": {}}], "part 1 is a dict"),
        (lambda p: "x", "combine needs a list of HistoryStats, got str"),
        (lambda p: p, "combine needs a list of HistoryStats, got HistoryStats"),
        (lambda p: 7, "combine needs a list of HistoryStats, got int"),
        (lambda p: [], "combine needs at least one HistoryStats"),
    ],
    ids=["str", "none", "int-first", "dict", "a-string", "one-stats", "int", "empty"],
)
def test_combine_refuses_what_is_not_statistics(part, parts, match):
    with pytest.raises(ConfigError, match=match):
        HistoryStats.combine(parts(part))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda meta: [], "must hold a JSON object, got list"),
        (
            lambda meta: {k: v for k, v in meta.items() if k != "files"},
            "a missing or malformed field",
        ),
        (lambda meta: {**meta, "roles": 3}, "a missing or malformed field"),
    ],
    ids=["list", "no-files", "roles-int"],
)
def test_saved_statistics_with_a_malformed_stats_json(part, tmp_path, edit, match):
    from revlens._io import MANIFEST

    part.save(tmp_path / "stats")
    meta_file = tmp_path / "stats" / "stats.json"
    meta_file.write_text(json.dumps(edit(json.loads(meta_file.read_text()))))
    man = json.loads(
        (tmp_path / "stats" / MANIFEST).read_text()
    )  # a same-size forgery passes the manifest
    man["files"]["stats.json"] = meta_file.stat().st_size
    (tmp_path / "stats" / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(CacheError, match=match) as info:
        HistoryStats.load(tmp_path / "stats")
    assert "stats.json" in str(info.value)


# ------------------------------------------------------------------ spill and cache dirs
def _spill_target(tmp_path: Path, case: str) -> Path:
    (tmp_path / "a-file").write_text("x")
    if case == "a-file":
        return tmp_path / "a-file"
    if case == "under-a-file":
        return tmp_path / "a-file" / "spill"
    if os.geteuid() == 0:  # root writes through permission bits: a file system that refuses writes
        return Path("/sys/revlens-spill")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    return ro / "spill"


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("a-file", "spill_dir .*a-file exists and is not a directory"),
        ("under-a-file", "spill_dir .*spill cannot be created|is not a directory"),
        ("read-only", "spill_dir .*(cannot be created|cannot write)"),
    ],
)
def test_a_bad_spill_dir_fails_before_any_forward(tiny_history, tiny_lm, tmp_path, case, match):
    target = _spill_target(tmp_path, case)
    before = _files(tmp_path)
    with counting_forwards(tiny_lm) as calls, pytest.raises(OutputError, match=match):
        collect(
            tiny_history,
            tiny.PROMPTS,
            model=tiny_lm,
            memory_budget=0,
            spill_dir=target,
            progress=False,
        )
    assert calls == []
    assert _files(tmp_path) == before


def test_a_missing_spill_dir_is_created_and_used(tiny_history, tiny_lm, tmp_path):
    spill = tmp_path / "not" / "yet"
    stats = collect(
        tiny_history,
        tiny.PROMPTS,
        model=tiny_lm,
        layers=[1],
        memory_budget=0,
        spill_dir=spill,
        n_bootstrap=0,
        progress=False,
    )
    assert spill.is_dir() and list(spill.iterdir()) == []  # created; spilled files are unlinked
    assert stats[tiny_history.aligned.name].refs is not None


@pytest.mark.parametrize("case", ["a-file", "under-a-file", "read-only"])
def test_a_bad_cache_dir_fails_before_any_forward(tiny_history, tiny_lm, tmp_path, case):
    target = _spill_target(tmp_path, case)
    with counting_forwards(tiny_lm) as calls, pytest.raises(CacheError, match="cache_dir"):
        collect(tiny_history, tiny.PROMPTS, model=tiny_lm, cache_dir=target, progress=False)
    assert calls == []


# ------------------------------------------------------------------ the CLI's --out
@pytest.fixture(scope="module")
def cli_history(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-out")
    tiny.write_history(root, n_runs=1, steps=(1, 2))
    (root / "probes.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in tiny.PROMPTS)
    )
    return root


def _analyze(h: Path, out: Path, *extra: str) -> list[str]:
    return [
        "analyze",
        "--history",
        str(h),
        "--probes",
        str(h / "probes.jsonl"),
        "--out",
        str(out),
        "--layers",
        "1",
        "2",
        "--n-null",
        "2",
        "--n-bootstrap",
        "0",
        "--n-stability",
        "0",
        "--no-progress",
        *extra,
    ]


def test_out_on_a_file_system_that_refuses_writes_exits_2_up_front(cli_history, tmp_path, capsys):
    from revlens.cli import main

    out = Path("/sys/revlens-out") if os.geteuid() == 0 else tmp_path / "ro" / "out"
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o500)
    assert main(_analyze(cli_history, out)) == 2
    err = capsys.readouterr().err.strip()
    # up front: the --out check's own words (after the analysis, publishing would name the
    # "output directory"; before this fix it was "internal error: PermissionError")
    assert err.startswith("revlens analyze: error: --out") and "cannot write" in err, err
    assert not out.exists()


def test_out_that_is_an_unrelated_non_empty_folder_is_refused(cli_history, tmp_path, capsys):
    from revlens.cli import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(_analyze(cli_history, out)) == 2
    assert "no revlens command wrote" in capsys.readouterr().err
    assert _files(out) == {"notes.txt": b"keep me"}


def test_out_is_published_as_a_whole_and_an_interrupt_leaves_the_old_folder(
    cli_history, tmp_path, monkeypatch, capsys
):
    from revlens._io import MANIFEST, check_manifest
    from revlens.cli import main
    from revlens.report.report import Report

    out = tmp_path / "out"
    assert main(_analyze(cli_history, out, "--seed", "1")) == 0
    check_manifest(out, "--out")  # every file of the run, listed
    old = _files(out)
    assert {"drift.csv", "directions.csv", "summary.json", "report.html", MANIFEST} <= set(old)
    # a dead run's leftovers beside it (SIGKILL): removed by the next run
    (tmp_path / ".out.tmp-999999999-deadbeef").mkdir()
    (tmp_path / ".out.tmp-999999999-deadbeef" / "drift.csv").write_text("half")
    (tmp_path / ".out.old-999999999-cafebabe").mkdir()

    def interrupted(self, *a, **k):  # Ctrl-C while the new run writes its last file
        raise KeyboardInterrupt

    monkeypatch.setattr(Report, "to_html", interrupted)
    assert main(_analyze(cli_history, out, "--seed", "2", "--methods", "mean_diff")) == 130
    assert _files(out) == old  # the old folder, every file: no new drift.csv beside an old report/
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    monkeypatch.undo()
    assert main(_analyze(cli_history, out, "--seed", "2")) == 0
    new = _files(out)
    assert new["summary.json"] != old["summary.json"] or new["drift.csv"] != old["drift.csv"]
    check_manifest(out, "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    capsys.readouterr()


def test_a_live_writers_temporary_folder_is_kept(tmp_path):
    from revlens._io import publish_dir

    live = tmp_path / f".res.tmp-{os.getpid()}-0123abcd"
    live.mkdir()
    with publish_dir(tmp_path / "res") as d:
        (d / "a.txt").write_text("a")
    assert live.is_dir() and (tmp_path / "res" / "a.txt").read_text() == "a"


# ------------------------------------------------------------------ forwards, named by checkpoint
def _raising_hook(lm, after: int = 0):
    """A user's forward hook on the real bridge that raises inside the forward after ``after`` calls."""
    seen = []

    def hook(module, args, output):
        seen.append(1)
        if len(seen) > after:
            raise RuntimeError("CUDA error: device-side assert triggered")

    return lm.bridge.hook_dict["blocks.0.hook_resid_post"].register_forward_hook(hook)


@pytest.mark.parametrize(
    ("kinds", "after", "where"),
    [
        (("clamp",), 0, r"timing a forward on checkpoint \S+"),  # the plan's timed forward
        (("clamp",), 3, r"checkpoint aligned"),  # the aligned pass
        (("patch",), 3, r"while capturing on checkpoint aligned"),
        (("clamp",), 4, r"while intervening on checkpoint aligned"),  # the aligned clean metric
        (("clamp",), 5, r"while intervening on checkpoint seed0/step-3"),  # a checkpoint's sweep
        (("patch",), 5, r"while intervening on checkpoint seed0/step-3"),
    ],
    ids=["plan", "aligned-clamp", "aligned-patch", "aligned-metric", "sweep-clamp", "sweep-patch"],
)
def test_an_exception_inside_an_ablation_forward_names_the_checkpoint(
    tiny_history, tiny_lm, part, kinds, after, where
):
    handle = _raising_hook(tiny_lm, after=after)
    try:
        with pytest.raises(RevlensError, match=where + r".*RuntimeError: CUDA error"):
            ablation_study(
                tiny_history,
                tiny.PROMPTS,
                logit_diff(["w1"], ["w2"]),
                model=tiny_lm,
                stats=part,
                layers=[1],
                steps="last",
                runs=["seed0"],
                kinds=kinds,
                controls=1,
                progress=False,
            )
    finally:
        handle.remove()


def test_an_exception_inside_an_evaluate_forward_names_the_checkpoint(tiny_history, tiny_lm):
    handle = _raising_hook(
        tiny_lm, after=1
    )  # the first checkpoint's forward passes, the next raises
    try:
        with pytest.raises(
            RevlensError, match=r"while evaluating checkpoint \S+: RuntimeError: CUDA error"
        ):
            evaluate(
                tiny_history,
                tiny.PROMPTS,
                {"ld": logit_diff(["w1"], ["w2"])},
                model=tiny_lm,
                batch_size=8,
                progress=False,
            )
    finally:
        handle.remove()


def test_a_metric_that_raises_names_metric_and_checkpoint(tiny_history, tiny_lm):
    def fragile(logits, batch):
        if fragile.calls:
            raise ZeroDivisionError("no refusals")
        fragile.calls += 1
        return logits[:, -1, 0]

    fragile.calls = 0
    with pytest.raises(
        MetricError, match=r"checkpoint \S+: metric 'fragile' raised ZeroDivisionError"
    ) as info:
        evaluate(tiny_history, tiny.PROMPTS, [fragile], model=tiny_lm, batch_size=8, progress=False)
    name = re.search(r"checkpoint (\S+):", str(info.value)).group(1)
    assert name in {c.name for c in tiny_history} and name != next(iter(tiny_history)).name


@pytest.mark.parametrize("method", ["update", "gradient", "penalty"])
def test_an_exception_inside_a_blocking_forward_names_step_layers_and_method(method):
    from unit.block import tinyrev

    from conftest import hook_count
    from revlens.block import ReversionBlocker

    blocker = ReversionBlocker(
        tinyrev.direction(),
        tinyrev.probes(),
        tinyrev.pair()[1],
        tokenizer=tiny.tiny_tokenizer(),
        method=method,
        refresh_every=1,
    )
    calls = []

    def hook(
        module, args, output
    ):  # the training forward passes; the blocker's probe forward raises
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("CUDA error: out of memory")

    model_box = {}

    def setup(model, opt):
        model_box["m"] = model
        model_box["n"] = hook_count(model)
        model.transformer.h[0].register_forward_hook(hook)
        blocker.attach(model, opt)

    try:
        with pytest.raises(
            RevlensError,
            match=rf"blocking training step \d+ \(layers \[.*\], method '{method}'\)"
            r".*RuntimeError: CUDA error: out of memory",
        ):
            tinyrev.train("revert", steps=1, setup=setup)
    finally:
        blocker.detach()
    assert hook_count(model_box["m"]) == model_box["n"] + 1  # only the test's own hook is left


# ------------------------------------------------------------------ the suite's size
def test_the_bad_input_suite_has_at_least_120_cases():
    """Issue 32: >= 120 hostile cases across the two bad-input modules (printed)."""
    files = [str(HERE.parent / "test_bad_input.py"), str(HERE)]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        capture_output=True,
        text=True,
        cwd=HERE.parents[2],
        timeout=300,
    )
    n = sum(1 for line in out.stdout.splitlines() if "::" in line)
    print(f"bad-input suite: {n} cases")
    assert n >= 120, out.stdout[-2000:] + out.stderr[-2000:]
