"""The README and docs/ as a user meets them: every train.py / evaluate.py command the README shows composes against
the config (an unknown group option or key fails here), the README stays a front page (<= 15,000 characters),
every docs/ file and section the code cites exists, and nothing cites a file outside the repository."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra.errors import HydraException
from omegaconf import open_dict
from omegaconf.errors import OmegaConfBaseException

from dpm.app.checks import check_train_config
from dpm.app.compose import compose
from dpm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CITING = [ROOT / "dpm", ROOT / "conf", ROOT / "tests"]
SCRIPTS = {"train.py": "train", "evaluate.py": "evaluate"}
DUMMY_CKPT = "outputs/example/checkpoints/last.ckpt"
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".txt", ".cfg", ".ini", ".sh"}


def code_block_lines(text: str) -> list[str]:
    """Lines inside fenced (```) or indented (4 spaces after a blank line) Markdown code blocks."""
    lines, fenced, indented, prev_blank = [], False, False, True
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            lines.append(line.strip())
            continue
        indented = line.startswith("    ") and (indented or prev_blank)
        if indented:
            lines.append(line.strip())
        prev_blank = not line.strip()
    return lines


def commands(text: str) -> list[tuple[str, str]]:
    """(config name, command) for each `python train.py ...` / `python evaluate.py ...` in a code block,
    also when it follows `&&` on a line."""
    found = []
    for line in code_block_lines(text):
        for part in line.split("&&"):
            words = part.strip().split()
            if len(words) >= 2 and words[0] == "python" and words[1] in SCRIPTS:
                found.append((SCRIPTS[words[1]], part.strip()))
    return found


def overrides_of(command: str) -> tuple[list[str], bool]:
    """The Hydra overrides of a command (shell-split, comments dropped) and whether it is a -m sweep; a sweep's
    comma list becomes its first value, a placeholder ckpt_path a dummy path."""
    words = shlex.split(command, comments=True)[2:]
    multirun = "-m" in words or "--multirun" in words
    out = []
    for w in words:
        if w in ("-m", "--multirun"):
            continue
        if w.startswith("~"):  # Hydra's deletion of a key (~diffusion.p)
            out.append(w)
            continue
        key, sep, value = w.partition("=")
        assert sep, f"{w!r} in `{command}` is not a Hydra override (key=value)"
        if multirun and "," in value and not value.startswith("["):
            value = value.split(",")[0]
        if key == "ckpt_path" and (value.isupper() or "<" in value or value.startswith("...")):
            value = DUMMY_CKPT
        out.append(f"{key}={value}")
    return out, multirun


def check_command(config_name: str, command: str) -> None:
    """Compose the command's overrides (Hydra's node included, so hydra/launcher=... and hydra.* keys are
    checked too) and, for train.py, run the checks train.py runs before building anything."""
    overrides, _ = overrides_of(command)
    if config_name == "evaluate" and not any(o.startswith("ckpt_path=") for o in overrides):
        overrides.append(f"ckpt_path={DUMMY_CKPT}")
    cfg = compose(overrides, config_name, return_hydra_config=True)
    if config_name == "train":
        with open_dict(cfg):
            del cfg["hydra"]  # train.py's own config has no hydra node
        check_train_config(cfg)
    else:
        assert cfg.task in ("bound", "sample") or cfg.task in cfg, f"task={cfg.task} has no settings node"


README_COMMANDS = commands(README.read_text())


def test_the_readme_shows_the_commands_of_every_kind():
    kinds = {name for name, _ in README_COMMANDS}
    assert kinds == {"train", "evaluate"} and len(README_COMMANDS) >= 15
    assert any(overrides_of(c)[1] for _, c in README_COMMANDS), "no -m sweep found"


@pytest.fixture(scope="module")
def users_package(tmp_path_factory):
    """The package `mypkg` that the README's "Bring your own data and code" commands name: a DataModule, a network
    and a task (tests/test_own_code.py's), with its own config folder `mypkg/conf` (dataset=mydata, net=mynet)."""
    import importlib
    import sys
    import textwrap

    from tests.test_own_code import PACKAGE

    root = tmp_path_factory.mktemp("users_package")
    files = {name: text for name, text in PACKAGE.items() if name.startswith("mypkg/")}
    files.update({"mypkg/mytask.py": PACKAGE["mypkg/task.py"], "mypkg/conf/__init__.py": "",
                  "mypkg/conf/dataset/mydata.yaml": PACKAGE["conf/dataset/blobs.yaml"],
                  "mypkg/conf/net/mynet.yaml": PACKAGE["conf/net/tiny.yaml"]})
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip())
    def forget_mypkg() -> None:  # another test's package of the same name may be imported already
        for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
            del sys.modules[name]

    forget_mypkg()
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    yield root
    sys.path.remove(str(root))
    forget_mypkg()


@pytest.mark.parametrize("config_name,command", README_COMMANDS, ids=[c for _, c in README_COMMANDS])
def test_readme_command_composes(config_name, command, users_package):
    check_command(config_name, command)


@pytest.mark.parametrize("command", [
    "python train.py dataset=nosuchdata",           # an unknown group option
    "python train.py dataset.batch_sise=1",         # an unknown key
    "python train.py -m 'seed=0,1' nosuchkey=1",    # an unknown top-level key in a sweep
    "python evaluate.py ckpt_path=PATH task=nosuch",  # a task with no settings
])
def test_a_wrong_command_fails_the_check(command):
    config_name = SCRIPTS[command.split()[1]]
    with pytest.raises((HydraException, OmegaConfBaseException, ConfigError, AssertionError)):
        check_command(config_name, command)


def test_the_command_parser_reads_sweeps_comments_and_chains():
    text = "Text.\n\n    pip install -e . && python train.py T=3 && python evaluate.py ckpt_path=PATH\n\n" \
           "```bash\npython train.py -m 'seed=0,1,2' schedule=a,b   # a sweep\n```\n"
    found = commands(text)
    assert found == [("train", "python train.py T=3"), ("evaluate", "python evaluate.py ckpt_path=PATH"),
                     ("train", "python train.py -m 'seed=0,1,2' schedule=a,b   # a sweep")]
    assert overrides_of(found[1][1]) == ([f"ckpt_path={DUMMY_CKPT}"], False)
    assert overrides_of(found[2][1]) == (["seed=0", "schedule=a"], True)


def test_readme_is_a_front_page():
    assert len(README.read_text()) <= 15_000


def text_files(paths: list[Path]):
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" not in f.parts and f.suffix in TEXT_SUFFIXES:
                yield f


# Built from pieces so that this file does not match itself.
OUTSIDE = re.compile("|".join([
    "PAPER" + r"\.md", "DESIGN" + r"\.md", "STYLE" + r"\.md", "PEERS" + r"\.md", "GPU" + r"\.md",
    r"\b" + "issue" + r" [0-9]+", "this " + "session", r"\.\./" + "shared",
]))


def test_nothing_cites_a_file_outside_the_repository():
    hits = [f"{f.relative_to(ROOT)}:{n}: {line.strip()}"
            for f in text_files([ROOT / "dpm", ROOT / "conf", ROOT / "tests", README, DOCS])
            for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, "\n".join(hits)


def test_the_pattern_finds_what_it_must():
    for bad in ["see " + "PAPER" + ".md", "as in " + "issue" + " 7", "in this " + "session", "../" + "shared/x"]:
        assert OUTSIDE.search(bad), bad
    assert not OUTSIDE.search("docs/paper.md §5.6, tissue 3")


CITED_FILES = [ROOT / "dpm", ROOT / "conf", ROOT / "tests", README]


def test_every_cited_doc_exists():
    cited = {m for f in text_files(CITED_FILES) for m in re.findall(r"docs/[\w./-]+?\.(?:md|png)", f.read_text())}
    assert {"docs/paper.md", "docs/contracts.md"} <= cited
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert not missing, missing


def test_links_inside_docs_exist():
    missing = []
    for f in sorted(DOCS.glob("*.md")):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", f.read_text()):
            if "://" not in target and not (f.parent / target).exists():
                missing.append(f"{f.name}: {target}")
    assert not missing, missing


def cited_sections(text: str) -> set[str]:
    """Every section of `docs/paper.md §1.3 and 2.4`, `§2.2-2.3`, `§6.1, 6.3`: {"1.3", "2.4", "2.2", ...}."""
    out = set()
    for m in re.finditer(r"docs/paper\.md §([0-9.]+(?:(?:, | and |-)[0-9]+(?:\.[0-9]+)*)*)", text):
        out |= {s.rstrip(".") for s in re.split(r", | and |-", m.group(1))}
    return out


def test_every_cited_section_of_the_paper_map_exists():
    headings = set(re.findall(r"^#+ §([0-9.]+) ", (DOCS / "paper.md").read_text(), re.MULTILINE))
    cited = set().union(*(cited_sections(f.read_text()) for f in text_files(CITED_FILES)))
    assert {"1.2", "2.3", "10.9"} <= cited
    missing = sorted(cited - headings, key=lambda s: [int(p) for p in s.split(".")])
    assert not missing, missing


def test_cited_sections_are_read_in_full():
    assert cited_sections("(docs/paper.md §1.3 and 7.2; docs/paper.md §2.2-2.3, 3.2. docs/paper.md §2.4.)") == \
        {"1.3", "7.2", "2.2", "2.3", "3.2", "2.4"}


def test_every_cited_contract_exists():
    headings = set(re.findall(r"^## ([0-9]+)\. ", (DOCS / "contracts.md").read_text(), re.MULTILINE))
    assert headings == {str(n) for n in range(1, 13)}
    cited = {m for f in text_files(CITED_FILES) for m in re.findall(r"docs/contracts\.md, contract ([0-9]+)",
                                                                    f.read_text())}
    assert cited and cited <= headings, sorted(cited - headings)


def test_the_readme_tells_cpu_only_users_how_to_get_the_cpu_wheels():
    """A CPU-only machine need not download CUDA: PyTorch's own CPU index, installed first, is kept by
    `pip install -e .`; CI installs the same way where it has no GPU."""
    text = README.read_text()
    command = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"
    assert command in " ".join(text.split())
    assert "torch torchvision --index-url https://download.pytorch.org/whl/cpu" in (ROOT / ".ci" / "run").read_text()
