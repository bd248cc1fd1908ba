"""Which backbone for my data: LogME and LEEP (analysis/transferability.py) on data with a known answer,
`rank-backbones` on the real packaged EfficientNet-Lite0 against the same architecture at random init,
its job, an experiment over backbones, and how the ranking's prediction is checked after it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tl_core import cli, service
from tl_core.analysis import transferability as T
from tl_core.cli.parser import build_parser
from tl_core.config import make_config
from tl_core.errors import UserError
from tl_core.service import jobs

from .test_app import demo_root, env, make_run, no_exception, page  # noqa: F401  (fixtures)

# --- LogME: the evidence, its maximum, its known answers (numpy only) ----------------------------


def _blobs(n: int, dims: int, classes: int = 3, spread: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features around one random mean per class, `spread` apart: separable as spread grows."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return rng.normal(size=(n, dims)) + spread * rng.normal(size=(classes, dims))[y], y


def _log_marginal(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y | 0, I / beta + F F^T / alpha) per image, computed directly from the (n, n) covariance."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (n * np.log(2 * np.pi) + logdet + y @ np.linalg.solve(cov, y))) / n


def _scaled_spectrum(f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F divided by its largest singular value (as logme scores it), and that F's U and sigma."""
    scaled = f / np.linalg.svd(f, compute_uv=False)[0]
    u, sigma = T._spectrum(f)
    return scaled, u, sigma


def test_logme_per_class_evidence_is_the_marginal_likelihood_at_its_maximum():
    f, y = _blobs(200, 10)
    scaled, u, sigma = _scaled_spectrum(f)
    for c in range(3):
        target = (y == c).astype(float)
        e = T.class_evidence(u, sigma, target, dims=10)
        assert e.converged and e.steps < 50
        # The closed form over the SVD is the Gaussian marginal likelihood of the labels ...
        assert e.evidence == pytest.approx(_log_marginal(scaled, target, e.alpha, e.beta), abs=1e-9)
        # ... at its maximum over alpha and beta (moving either away lowers it) ...
        for a, b in ((1.2, 1), (0.8, 1), (1, 1.2), (1, 0.8)):
            assert _log_marginal(scaled, target, e.alpha * a, e.beta * b) < e.evidence
        # ... where MacKay's fixed point holds: alpha = gamma / |m|^2, beta = (n - gamma) / |F m - y|^2.
        a_mat = e.alpha * np.eye(10) + e.beta * scaled.T @ scaled
        m = e.beta * np.linalg.solve(a_mat, scaled.T @ target)
        gamma = float((e.beta * sigma / (e.alpha + e.beta * sigma)).sum())
        assert e.alpha == pytest.approx(gamma / (m @ m), rel=1e-5)
        assert e.beta == pytest.approx((200 - gamma) / ((scaled @ m - target) ** 2).sum(), rel=1e-5)


def test_with_fewer_images_than_dimensions_logme_takes_the_noiseless_limit_it_approaches():
    """n <= D: the labels can be fitted exactly, the evidence grows with beta towards N(y | 0, F F^T / alpha)."""
    f, y = _blobs(30, 100)
    scaled, u, sigma = _scaled_spectrum(f)
    target = (y == 0).astype(float)
    e = T.class_evidence(u, sigma, target, dims=100)
    assert e.beta == np.inf and e.converged
    assert e.evidence == pytest.approx(_log_marginal(scaled, target, e.alpha, np.inf), abs=1e-9)
    below = [_log_marginal(scaled, target, e.alpha, beta) for beta in (1e2, 1e4, 1e6)]
    assert below[0] < below[1] < below[2] < e.evidence  # rising towards the limit, never past it
    assert (
        _log_marginal(scaled, target, e.alpha * 1.2, np.inf)
        < e.evidence
        > _log_marginal(scaled, target, e.alpha * 0.8, np.inf)
    )


def test_logme_prefers_features_that_separate_the_classes():
    f, y = _blobs(120, 16, spread=2.0)
    shuffled = np.random.default_rng(1).permutation(y)
    noise = np.random.default_rng(2).normal(size=f.shape)
    assert T.logme(f, y) > T.logme(f, shuffled) + 0.3  # the same features, labels they do not predict
    assert T.logme(f, y) > T.logme(noise, y) + 0.3  # features that know nothing of the labels
    weak, strong = T.logme(*_blobs(120, 16, spread=0.5)), T.logme(*_blobs(120, 16, spread=4.0))
    assert weak < T.logme(f, y) < strong  # more separable, higher


def test_logme_ignores_the_features_scale_and_the_labels_names():
    f, y = _blobs(90, 12)
    base = T.logme(f, y)
    assert T.logme(1000 * f, y) == pytest.approx(base, abs=1e-9)  # alpha absorbs any scale
    assert T.logme(f / 1000, y) == pytest.approx(base, abs=1e-9)
    assert T.logme(f, np.array([3, 7, 11])[y]) == pytest.approx(base, abs=1e-12)  # only present classes count
    # The average of each class's evidence: one class's indicator scored alone, by hand.
    _, u, sigma = _scaled_spectrum(f)
    each = [T.class_evidence(u, sigma, (y == c).astype(float), 12).evidence for c in range(3)]
    assert base == pytest.approx(np.mean(each), abs=1e-12)


def _reference_logme_icml(f: np.ndarray, y: np.ndarray) -> float:
    """The authors' ICML form, transcribed from github.com/thuml/LogME LogME.py (MIT licence):
    `_fit_icml` and `each_evidence`, numba left out."""
    fh, f = f, f.T
    dims, n = f.shape
    v, s, vh = np.linalg.svd(f @ fh, full_matrices=True)
    evidences = []
    for i in range(int(y.max() + 1)):
        y_ = (y == i).astype(np.float64)
        epsilon, alpha, beta = 1e-5, 1.0, 1.0
        lam = alpha / beta
        tmp = vh @ (f @ y_)
        for _ in range(11):
            gamma = (s / (s + lam)).sum()
            m = v @ (tmp * beta / (alpha + beta * s))
            alpha_de = (m * m).sum()
            alpha = gamma / (alpha_de + epsilon)
            beta_de = ((y_ - fh @ m) ** 2).sum()
            beta = (n - gamma) / (beta_de + epsilon)
            new_lam = alpha / beta
            if np.abs(new_lam - lam) / lam < 0.01:
                break
            lam = new_lam
        evidence = (
            dims / 2.0 * np.log(alpha)
            + n / 2.0 * np.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * s))
            - beta / 2.0 * (beta_de + epsilon)
            - alpha / 2.0 * (alpha_de + epsilon)
            - n / 2.0 * np.log(2 * np.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def test_logme_agrees_with_the_authors_reference_where_their_forms_agree():
    """More images than dimensions, features of unit scale: the reference's early stop and epsilon
    move its number by less than 1e-3 from the maximum computed here."""
    for seed in range(3):
        f, y = _blobs(150, 8, spread=1.0, seed=seed)
        assert T.logme(f, y) == pytest.approx(_reference_logme_icml(f, y), abs=1e-3)


# --- LEEP ----------------------------------------------------------------------------------------


def _leep_by_the_formula(theta: np.ndarray, y: np.ndarray) -> float:
    """Nguyen et al. 2020, eq. (1)-(2), one sum at a time."""
    n, sources = theta.shape
    classes = sorted(set(y.tolist()))
    joint = {(c, z): sum(theta[i, z] for i in range(n) if y[i] == c) / n for c in classes for z in range(sources)}
    marginal = {z: sum(joint[c, z] for c in classes) for z in range(sources)}
    total = 0.0
    for i in range(n):
        total += np.log(sum(joint[y[i], z] / marginal[z] * theta[i, z] for z in range(sources)))
    return total / n


def test_leep_is_its_formula():
    rng = np.random.default_rng(0)
    theta = T.softmax(rng.normal(size=(40, 7)) * 2)
    y = rng.integers(0, 3, 40)
    assert T.leep(theta, y) == pytest.approx(_leep_by_the_formula(theta, y), abs=1e-12)
    assert T.softmax(np.array([[1000.0, 0.0], [0.0, 0.0]])) == pytest.approx(np.array([[1.0, 0.0], [0.5, 0.5]]))


def test_leep_known_answers():
    y = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    # Each target class read off its own source class with certainty: every image predicted right, log 1.
    assert T.leep(np.eye(4)[y], y) == pytest.approx(0.0, abs=1e-12)
    # A source model that says the same of every image: the predictor is the classes' frequencies,
    # and LEEP the labels' mean log frequency (minus their empirical entropy).
    frequency = np.bincount(y) / len(y)
    assert T.leep(np.full((10, 5), 0.2), y) == pytest.approx(np.mean(np.log(frequency[y])), abs=1e-12)
    # Informative but noisy source probabilities beat the same ones against shuffled labels, and LEEP <= 0.
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 3
    theta = T.softmax(3 * np.eye(6)[labels] + rng.normal(size=(300, 6)))
    shuffled = rng.permutation(labels)
    assert T.leep(theta, shuffled) < T.leep(theta, labels) <= 0


def test_bad_input_is_refused():
    f, y = _blobs(20, 4)
    with pytest.raises(ValueError, match="at least two classes"):
        T.logme(f, np.zeros(20, dtype=int))
    with pytest.raises(ValueError, match="must agree"):
        T.logme(f, y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        T.logme(np.full_like(f, np.nan), y)
    with pytest.raises(ValueError, match="probabilities"):
        T.leep(f, y)


# --- rank-backbones: real weights, real images ---------------------------------------------------


def _rank(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = cli.main(["rank-backbones", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 and "--json" in args else None, err


def test_rank_backbones_puts_pretrained_lite0_above_the_same_architecture_at_random_init(
    animals, store, capsys, monkeypatch
):
    from tl_core.analysis import backbone_ranking

    seen = []  # the images each candidate is scored on: a train subsample, never val or test
    measure = backbone_ranking.frozen_activations
    monkeypatch.setattr(
        backbone_ranking, "frozen_activations", lambda cfg, splits, *a: seen.append(splits) or measure(cfg, splits, *a)
    )
    common = ["--data", animals, "--image-size", "64", "--max-per-class", "4", "--test-fraction", "0.2"]
    flags = [*common, "--experiment", "rank", "--db", store.url, "--json"]
    code, found, _ = _rank(capsys, *flags, "--backbones", "efficientnet_lite0@none,efficientnet_lite0")
    assert code == 0 and found is not None
    first, second = found["ranked"]
    assert (first["candidate"], second["candidate"]) == ("efficientnet_lite0", "efficientnet_lite0@none")
    assert (first["rank"], second["rank"]) == (1, 2) and first["logme"] > second["logme"] + 0.02
    # LEEP only where the ImageNet head exists; every score timed, the features computed once each.
    assert first["leep"] < 0 and first["leep_rank"] == 1 and first["leep_skipped"] is None
    assert second["leep"] is None and second["leep_rank"] is None and "random init" in second["leep_skipped"]
    assert all(s["seconds"] >= s["seconds_features"] > 0 and s["seconds_logme"] >= 0 for s in found["ranked"])
    assert {s["feature_cache"] for s in found["ranked"]} == {"computed"} and first["features"] == 1280
    assert (found["images"], len(found["classes"]), found["split"], found["ranked_by"]) == (40, 10, "train", "logme")
    assert set(found["scores"]) == {"logme", "leep"} and found["data"] == animals and found["job"] is None
    assert all(s["image_size"] == 64 and s["weights"] in ("imagenet", "none") for s in found["ranked"])
    # Stored with the experiment, as the probe is; a second ranking reads the cache.
    (stored,) = store.artifacts("rank", "backbone_ranking")
    assert stored.data["ranked"] == found["ranked"]
    for splits in seen:
        assert not splits.val and not splits.test and len(splits.train) == 40
    held = {it.path for it in _held_out(animals)}
    assert not held & {it.path for s in seen for it in s.train}
    code, again, _ = _rank(capsys, *flags, "--backbones", "efficientnet_lite0")
    assert again["ranked"][0]["feature_cache"] == "hit" and again["ranked"][0]["logme"] == first["logme"]
    # Text: a table, best first.
    code, _, _ = _rank(capsys, *common, "--db", store.url, "--backbones", "efficientnet_lite0,efficientnet_lite0@none")
    assert code == 0


def _held_out(data: str):
    from tl_core.data.scan_cache import scan_dataset
    from tl_core.data.splits import split_dataset

    splits = split_dataset(scan_dataset(data), 0.2, 1.0, 0, 0.2)
    return [*splits.val, *splits.test]


@pytest.mark.parametrize(
    "backbones, data, message",
    [
        ("resnet999", None, "--backbones: unknown backbone 'resnet999'"),
        ("efficientnet_lite0,efficientnet_lite0", None, "efficientnet_lite0 listed twice"),
        ("efficientnet_lite0@", None, "is not a backbone"),
        ("efficientnet_lite0", "empty", "has no class folders"),
    ],
)
def test_bad_input_gets_one_clear_line(animals, store, capsys, tmp_path, backbones, data, message):
    folder = animals if data is None else str(tmp_path / data)
    (tmp_path / "empty").mkdir()
    code, _, err = _rank(capsys, "--data", folder, "--backbones", backbones, "--db", store.url)
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_a_page_starts_the_ranking_as_a_job_whose_command_line_parses():
    cfg = make_config(data="/d", image_size=96, experiment="e", weights="none")
    args = [*jobs.flags(cfg, jobs.NOT_FLAGS["rank-backbones"]), "--backbones", "efficientnet_lite0,efficientnet_lite1"]
    assert (
        "--backbone" not in args and "--image-size" not in args and jobs.KINDS["rank-backbones"] == "backbone_ranking"
    )
    parsed = build_parser().parse_args(["rank-backbones", *args, "--job", "j"])
    assert parsed.backbones == ["efficientnet_lite0", "efficientnet_lite1"] and parsed.rank_image_size is None
    assert (parsed.weights, parsed.experiment, parsed.job) == ("none", "e", "j")


# --- an experiment over backbones, and the ranking checked after it ------------------------------


def test_an_experiment_spans_backbones(tiny):
    base = {"data": tiny, "image_size": 32, "epochs": 1, "experiment": "b"}
    configs = service.plan_runs(
        base, ["feature_extraction", "full"], [0, 1], backbones=["efficientnet_lite0", "efficientnet_lite1"]
    )
    assert [(c.backbone, c.strategy, c.seed) for c in configs[:4]] == [
        ("efficientnet_lite0", "feature_extraction", 0),
        ("efficientnet_lite0", "feature_extraction", 1),
        ("efficientnet_lite0", "full", 0),
        ("efficientnet_lite0", "full", 1),
    ]
    assert len(configs) == 8 and {c.backbone for c in configs[4:]} == {"efficientnet_lite1"}
    assert {c.backbone for c in service.plan_runs({**base, "backbone": "efficientnet_lite1"}, ["full"], [0])} == {
        "efficientnet_lite1"
    }
    with pytest.raises(UserError, match="listed twice"):
        service.plan_runs(base, ["full"], [0], backbones=["efficientnet_lite0", "efficientnet_lite0"])
    with pytest.raises(UserError, match="unknown backbone"):
        service.plan_runs(base, ["full"], [0], backbones=["efficientnet_lite0", "nope"])


def test_experiment_refuses_backbone_and_backbones_together(tiny, store, capsys):
    args = ["experiment", "--data", tiny, "--strategies", "full", "--db", store.url, "--detach"]
    assert cli.main([*args, "--backbone", "efficientnet_lite0", "--backbones", "efficientnet_lite1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli.main([*args, "--backbones", "efficientnet_lite0,efficientnet_lite1", "--image-size", "32"]) == 0
    assert {r.config["backbone"] for r in store.list_runs()} == {"efficientnet_lite0", "efficientnet_lite1"}


def _finished(store, backbone: str, strategy: str, seed: int, acc: float, weights: str = "imagenet") -> None:
    config = {"data": "/d", "backbone": backbone, "weights": weights, "strategy": strategy, "seed": seed, "epochs": 1}
    run = store.create_run(config, "over", status="running")
    store.log_epoch(run.id, 0, {"val_acc": acc, "val_loss": 1 - acc}, best=(acc, 0))
    store.finish_run(run.id, "completed", summary={"train_images": 20, "classes": ["a", "b"]})


def _ranking(store, scores: dict[str, float], data: str = "/d") -> None:
    ranked = [
        {"candidate": c, "backbone": c.partition("@")[0], "weights": c.partition("@")[2] or "imagenet", "logme": v}
        for c, v in sorted(scores.items(), key=lambda kv: -kv[1])
    ]
    for i, s in enumerate(ranked, 1):
        s.update(rank=i, leep=None if "@" in s["candidate"] else -1.0 - i / 10)
    store.add_artifact("over", "backbone_ranking", {"ranked": ranked, "data": data, "job": None})


def test_compare_groups_an_experiment_by_backbone_and_says_how_well_the_ranking_predicted_it(store):
    measured = {
        "resnet18": 0.70,
        "efficientnet_lite0": 0.80,
        "efficientnet_lite1": 0.85,
        "efficientnet_lite0@none": 0.3,
    }
    for seed in (0, 1):
        for candidate, acc in measured.items():
            backbone, _, weights = candidate.partition("@")
            _finished(store, backbone, "feature_extraction", seed, acc + 0.01 * seed, weights or "imagenet")
    runs = store.list_runs("over")
    labels = {g.label for g in service.group_runs(runs)}
    assert "backbone resnet18 · weights imagenet" in labels and len(labels) == 4  # Compare's groups, by backbone
    assert service.ranking_agreement(store, "over") is None  # no ranking stored
    # LogME got the order right but for the two Lite models: rho = 0.8, tau = 4/6.
    _ranking(
        store,
        {"resnet18": -0.5, "efficientnet_lite0": -0.2, "efficientnet_lite1": -0.3, "efficientnet_lite0@none": -0.9},
    )
    found = service.ranking_agreement(store, "over")
    (row,) = found["by_strategy"]
    assert row["strategy"] == "feature_extraction" and [p["candidate"] for p in row["points"]][:2] == [
        "efficientnet_lite0",
        "efficientnet_lite1",
    ]
    assert row["logme"]["spearman"] == pytest.approx(0.8) and row["logme"]["kendall"] == pytest.approx(4 / 6)
    assert row["leep"] is not None and row["leep"]["spearman"] == pytest.approx(0.5)  # three with LEEP
    assert row["points"][0]["measured"] == pytest.approx(0.805) and row["points"][0]["runs"] == 2
    assert "it put efficientnet_lite0 first (80.5%), but efficientnet_lite1 measured best (85.5%)" in row["text"]
    report = service.experiment_report(store, "over")
    assert report["ranking"]["by_strategy"][0]["text"] == row["text"]
    # A ranking of other data says nothing of these runs.
    store.add_artifact("over", "backbone_ranking", {"ranked": [], "data": "/elsewhere", "job": None})
    assert service.ranking_agreement(store, "over")["by_strategy"][0]["text"] == row["text"]


def test_one_strategy_over_backbones_pairs_the_backbones_in_the_statistics(store):
    for seed, noise in enumerate((0.0, 0.011, 0.004, 0.017, 0.008)):
        _finished(store, "efficientnet_lite0", "feature_extraction", seed, 0.70 + noise)
        _finished(
            store, "efficientnet_lite1", "feature_extraction", seed, 0.80 + (0.013, 0.002, 0.009, 0.0, 0.015)[seed]
        )
    runs = store.list_runs("over")
    (pair,) = service.statistics(runs, store.epoch_metrics([r.id for r in runs]))
    assert (pair["compared"], pair["a"], pair["b"], pair["verdict"]) == (
        "backbone",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "b",
    )
    assert pair["text"].startswith("efficientnet_lite1 beats efficientnet_lite0 by") and pair["n_pairs"] == 5
    assert pair["cell"] == {} and pair["strategy_a"] == pair["strategy_b"] == "feature_extraction"


# --- the pages: New run ranks the candidates (a real job), Compare says whether it was right -------


@pytest.mark.slow
def test_new_run_ranks_the_candidates_in_a_job_and_can_run_the_plan_on_each(env):
    from .helpers import job_result

    at = no_exception(page("new_run.py").run())
    at.multiselect(key="rank_candidates").set_value(["efficientnet_lite0", "efficientnet_lite1"])
    at = no_exception(at.button(key="rank_backbones").click().run())
    found = job_result(at, "rank_job", env)
    assert [s["backbone"] for s in sorted(found["ranked"], key=lambda s: s["backbone"])] == [
        "efficientnet_lite0",
        "efficientnet_lite1",
    ]
    assert {s["image_size"] for s in found["ranked"]} == {224, 240}  # each weights' native size
    at = no_exception(at.run())
    table = next(d.value for d in at.dataframe if "logme" in d.value.columns)
    assert list(table["candidate"]) == [s["candidate"] for s in found["ranked"]]
    at = no_exception(at.toggle(key="rank_span").set_value(True).run())
    plan = next(c.value for c in at.caption if c.value.startswith("Will queue"))
    assert "on efficientnet_lite" in plan and ", efficientnet_lite" in plan  # the plan spans both backbones


def test_compare_shows_the_backbones_and_how_well_the_ranking_predicted_them(env):
    for backbone, acc in (("efficientnet_lite0", 0.6), ("efficientnet_lite1", 0.7), ("resnet18", 0.5)):
        run = make_run(env, f"fe-{backbone}", "feature_extraction", experiment="nets")
        env.update_run(run.id, config={**run.config, "backbone": backbone, "weights": "imagenet"})
        env.log_epoch(run.id, 3, {"val_acc": acc, "val_loss": 1.0}, best=(acc, 3))
    ranked = [
        {"candidate": b, "backbone": b, "weights": "imagenet", "logme": v, "leep": None, "rank": r}
        for r, (b, v) in enumerate((("efficientnet_lite1", -0.1), ("efficientnet_lite0", -0.2), ("resnet18", -0.3)), 1)
    ]
    env.add_artifact("nets", "backbone_ranking", {"ranked": ranked, "data": "/nowhere", "job": None})
    at = page("compare.py")
    at.query_params["experiment"] = "nets"
    at = no_exception(at.run())
    summary = next(d for d in at.dataframe if "images_per_sec" in d.value.columns)
    assert list(summary.proto.column_order)[:3] == ["name", "backbone", "strategy"]  # each run's backbone, shown
    assert any(h.value == "Did the ranking pick the backbone?" for h in at.subheader)
    said = next(m.value for m in at.markdown if "LogME's ranking of 3 backbones" in m.value)
    assert "Spearman +1.00, Kendall +1.00" in said and "which measured best (70.0%)" in said
