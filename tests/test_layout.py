"""The package dependency rule of STYLE.md B1 parsed from the imports, README coverage, names after
method keys, doc references that resolve and file lengths."""

import ast
import os
import re
import subprocess

import pytest

from models.methods import ALIASES, METHODS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# package -> top-level modules it may import from this repository
ALLOWED = {
    "losses": {"losses", "utils"},  # utils.dist only, checked below
    "models": {"models", "losses"},  # losses.base only, checked below
    "data": {"data", "utils"},
    "utils": {"utils"},
}
# the registry ties models, losses and data together (the only models/ file that imports losses
# beyond losses.base); its builders read data's representations and dataset statistics (MV-MR's
# model takes its representations as a callable, no import); PatchMix's model mixes with data.mix
REGISTRY = "models/methods.py"
EXCEPTIONS = {REGISTRY: {"data", "utils"}, "models/builders.py": {"data", "utils"},
              "models/patchmix.py": {"data"},
              "models/encoder.py": {"data", "utils"}}  # evaluation: checkpoint + dataset size
LOCAL = {"losses", "models", "data", "utils", "tools", "main_pretrain", "main_knn", "main_lincls"}


def imported_modules(path):
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def package_files():
    for package in ALLOWED:
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if name.endswith(".py"):
                yield package, f"{package}/{name}"


@pytest.mark.parametrize("package,rel", list(package_files()))
def test_dependency_rule(package, rel):
    allowed = ALLOWED[package] | EXCEPTIONS.get(rel, set())
    for module in imported_modules(os.path.join(ROOT, rel)):
        top = module.split(".")[0]
        if top not in LOCAL:
            continue
        assert top in allowed, f"{rel} imports {module}"
        if package == "losses" and top == "utils":
            assert module == "utils" or module == "utils.dist", f"{rel} imports {module}"
        if package == "models" and top == "losses" and rel != REGISTRY:
            assert module == "losses.base", f"{rel} imports {module}"


# the engine: the training loop and the evaluation scripts (STYLE.md B11: adding a method
# changes none of them); (file, None = the whole file, else the functions checked)
ENGINE = [("main_pretrain.py", ("main_worker", "train_one_epoch")), ("utils/training.py", None),
          ("main_knn.py", None), ("main_lincls.py", None)]


def names_and_strings(tree):
    """Every identifier (variable, attribute, argument, keyword, definition) and string constant."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value
        elif isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, (ast.arg, ast.keyword)) and node.arg:
            yield node.arg
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            yield node.name


def engine_parts(rel, functions):
    with open(os.path.join(ROOT, rel)) as f:
        tree = ast.parse(f.read())
    if functions is None:
        return [tree]
    found = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert set(functions) <= set(found), f"{rel} lost {set(functions) - set(found)}"
    return [found[name] for name in functions]


@pytest.mark.parametrize("rel,functions", ENGINE)
def test_engine_never_names_a_method(rel, functions):
    keys = set(METHODS) | set(ALIASES)
    for part in engine_parts(rel, functions):
        named = keys & set(names_and_strings(part))
        assert not named, f"{rel} names the method(s) {sorted(named)}: move that into the registry"


def test_method_key_finder_sees_literals_and_names():
    tree = ast.parse('if args.method == "beclr" or dsf: x.patchmix(mvmr=1)')
    assert {"beclr", "dsf", "patchmix", "mvmr"} <= set(names_and_strings(tree))


def test_readme_documents_every_method():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    for name in METHODS:
        assert f"`--method {name}`" in readme, f"README has no row for --method {name}"


def test_every_methods_md_reference_names_a_section():
    """`methods.md §N` anywhere in the repository points at a heading of docs/methods.md."""
    with open(os.path.join(ROOT, "docs", "methods.md")) as f:
        sections = set(re.findall(r"^#+ §(\d+(?:\.\d+)?)", f.read(), flags=re.M))
    cited = {}
    for path in tracked_text_files():
        with open(os.path.join(ROOT, path), errors="replace") as f:
            for number in re.findall(r"methods\.md ?§ ?(\d+(?:\.\d+)?)", f.read()):
                cited.setdefault(number, path)
    assert cited, "the pattern found no reference at all"
    assert not {n: p for n, p in cited.items() if n not in sections}, sections


def tracked_text_files():
    out = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.sh", "*.yaml"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [p for p in out.split() if os.path.isfile(os.path.join(ROOT, p))]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_loss_module_class_and_test_are_named_after_a_method_key(method):
    """lightly's convention: --method beclr -> losses/beclr.py::BeCLRLoss, tests/test_loss_beclr.py
    (a variant such as mocov2_dsf or mvmr_clip may reuse the loss of the method it varies)."""
    import main_pretrain

    parser = main_pretrain.get_args_parser()
    args = parser.parse_args(["--method", method, "--dataset", "cifar10"])
    loss = METHODS[method].loss(args)
    key = type(loss).__module__.removeprefix("losses.")
    assert key in METHODS and type(loss).__name__.endswith("Loss"), type(loss)
    assert os.path.isfile(os.path.join(ROOT, "tests", f"test_loss_{key}.py"))


def test_no_source_file_is_over_400_lines():
    """STYLE: a file does one job; past ~400 lines it usually does several (tests excepted)."""
    long = {}
    for path in tracked_text_files():
        if path.endswith(".py") and not path.startswith("tests/"):
            with open(os.path.join(ROOT, path)) as f:
                if (n := sum(1 for _ in f)) > 400:
                    long[path] = n
    assert not long
