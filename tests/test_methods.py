"""The registry contract, parametrised over every METHODS entry (timm's trick): a new method is
tested as soon as it is registered."""

import argparse

import pytest
import torch

from data.batched import BatchMultiView
from data.views import METHOD_VIEWS, ViewSpec
from main_pretrain import get_args_parser
from models.methods import METHODS, build_model

TINY = ["--arch", "resnet18", "--width", "8", "--img-size", "16", "--moco-dim", "16",
        "--moco-mlp-dim", "32", "--proj-hidden-dim", "32", "--proj-dim", "16",
        "--pred-hidden-dim", "32", "--queue-size", "64", "--bank-size", "64", "--topk", "3",
        "--clip-pretrained", "none", "--clip-image-size", "32"]  # a random CLIP: no download


def tiny_args(method: str, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[get_args_parser()])
    args = parser.parse_args(["--method", method, *TINY, *extra])
    args.device = torch.device("cpu")
    return args


def run_step(method: str, batch: int = 8):
    args = tiny_args(method)
    model, _ = build_model(args)
    criterion = METHODS[method].loss(args)
    specs = METHODS[method].views(args)
    images = torch.randint(0, 256, (batch, 3, 20, 20), dtype=torch.uint8)
    views = BatchMultiView(specs, (0.5,) * 3, (0.25,) * 3)(images)
    if hasattr(model, "update_momentum"):
        model.update_momentum(0.9)
    out = model(views)
    loss, metrics = criterion(out, labels=torch.arange(batch) % 3)  # labels: metrics only
    return model, loss, metrics


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_training_step(method):
    model, loss, metrics = run_step(method)
    assert loss.dim() == 0 and torch.isfinite(loss)
    for name, value in metrics.items():
        assert value.dim() == 0 and not value.requires_grad, name
    loss.backward()
    online = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in online)
    for name, p in model.named_parameters():
        if name.startswith("momentum_"):
            assert p.grad is None, f"{name} received a gradient"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_summary_and_views(method):
    entry = METHODS[method]
    assert entry.summary and len(entry.views(tiny_args(method))) >= 2


def test_every_method_has_its_views():
    assert set(METHOD_VIEWS) == set(METHODS)


def spec_fields(spec: ViewSpec) -> tuple:
    return (spec.flip_p, spec.scale, spec.jitter, spec.jitter_p, spec.gray_p, spec.blur_p,
            spec.solarize_p)


def test_view_flags_set_every_side_or_each_side():
    official = METHODS["mocov3"].views(tiny_args("mocov3", "--img-size", "96", "--ns", "2"))
    assert [s.blur_p for s in official] == [1.0, 1.0, 0.1, 0.1]  # side-major, ns per side
    args = tiny_args("mocov3", "--img-size", "96", "--ns", "2", "--blur-p", "0.3", "--gray-p",
                     "0", "0.5", "--jitter", "0.1", "0.2", "0.3", "0", "--crop-scale", "0.5",
                     "1", "--flip-p", "0", "--jitter-p", "0.25", "--solarize-p", "0.1", "0.9")
    views = METHODS["mocov3"].views(args)
    side1 = (0.0, (0.5, 1.0), (0.1, 0.2, 0.3, 0.0), 0.25, 0.0, 0.3, 0.1)
    side2 = (0.0, (0.5, 1.0), (0.1, 0.2, 0.3, 0.0), 0.25, 0.5, 0.3, 0.9)
    assert [spec_fields(s) for s in views] == [side1, side1, side2, side2]
    assert [s.size for s in views] == [s.size for s in official]  # what no flag sets is kept


def test_view_flags_leave_the_original_view_alone():
    args = tiny_args("mvmr", "--img-size", "96", "--gray-p", "0.7")
    original, augmented = METHODS["mvmr"].views(args)
    assert not original.crop and original == ViewSpec(96, crop=False)
    assert augmented.gray_p == 0.7
    lines = METHODS["mvmr"].describe_views(args)
    assert len(lines) == 2 and "no augmentation" in lines[0] and "gray 0.7" in lines[1]


@pytest.mark.parametrize("flags, message", [
    (["--blur-p", "0.1", "0.2", "0.3"], "1 value for every side or 1 value per side"),
    (["--jitter", "0.4", "0.4", "0.2"], "4 numbers"),
    (["--gray-p", "1.5"], "--gray-p"),
    (["--crop-scale", "0.9", "0.2"], "MIN <= MAX"),
])
def test_bad_view_flags_are_one_line_errors(flags, message):
    with pytest.raises(SystemExit, match=message) as e:
        METHODS["simclr"].views(tiny_args("simclr", *flags))
    assert "\n" not in str(e.value)


def test_describe_names_every_settable_field():
    line = METHODS["patchmix"].describe_views(tiny_args("patchmix", "--img-size", "32"))[0]
    for word in ("crop scale", "bicubic", "flip", "jitter", "gray", "blur", "solarize"):
        assert word in line, (word, line)


def test_view_keys_in_a_config_file(tmp_path):
    """--config sets the same fields: a scalar for every side, a list per side."""
    from utils.args import parse_with_config

    config = tmp_path / "views.yaml"
    config.write_text("method: simclr\nimg_size: 16\nblur_p: 0.0\ngray_p: [0.1, 0.3]\n"
                      "crop_scale: [0.2, 1.0]\n")
    parser = argparse.ArgumentParser(parents=[get_args_parser()])
    args = parse_with_config(parser, ["--config", str(config), *TINY])
    views = METHODS["simclr"].views(args)
    assert [(s.blur_p, s.gray_p, s.scale) for s in views] == [(0.0, 0.1, (0.2, 1.0)),
                                                             (0.0, 0.3, (0.2, 1.0))]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_labels_feed_metrics_never_the_loss(method):
    args = tiny_args(method)
    model, _ = build_model(args)
    criterion = METHODS[method].loss(args).eval()  # eval: no queue update between the two calls
    views = BatchMultiView(METHODS[method].views(args), (0.5,) * 3, (0.25,) * 3)(
        torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8))
    with torch.no_grad():
        out = model(views)
        with_labels, _ = criterion(out, labels=torch.arange(8) % 3)
        without, _ = criterion(out)
    assert torch.equal(with_labels, without)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_loss_warnings_are_lines(method):
    criterion = METHODS[method].loss(tiny_args(method))
    assert criterion.warnings({"loss": 1.0}) == []  # healthy metrics: nothing to say
    for line in criterion.warnings({"active_frac": 0.01}):
        assert line and "\n" not in line


def test_beclr_warns_of_collapse():
    criterion = METHODS["beclr"].loss(tiny_args("beclr"))
    assert criterion.warnings({"active_frac": 0.5}) == []
    (line,) = criterion.warnings({"active_frac": 0.05})
    assert "5.0%" in line and "--k-subs" in line


def test_knn_similarities_come_from_their_method():
    """main_knn.py --similarity offers cosine plus each method's own monitor, built from its args."""
    import main_knn
    from losses.beclr import bregman_similarity
    from models.methods import KNN_SIMILARITIES

    assert KNN_SIMILARITIES == {m.knn.name: m.knn for m in METHODS.values() if m.knn}
    parser = argparse.ArgumentParser(parents=[main_knn.get_args_parser()])
    choices = next(a.choices for a in parser._actions if a.dest == "similarity")
    assert choices == ["cosine", *sorted(KNN_SIMILARITIES)]
    bregman = KNN_SIMILARITIES["bregman"]
    assert bregman.features == "subnet" and METHODS["beclr"].knn is bregman
    test, bank = torch.randn(3, 5), torch.randn(7, 5)
    similarity = bregman.build(argparse.Namespace(sigma=0.7))
    torch.testing.assert_close(similarity(test, bank), bregman_similarity(test, bank, 0.7))
