"""Config validation messages, presets, and the depth-window / candidate budget logic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from distillscope.budget import depth_windows, merge_candidates, select_children
from distillscope.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_papers():
    cfg = parse_config({})
    assert (cfg.tree.G, cfg.tree.tau, cfg.tree.n_min, cfg.tree.n_sig) == (200, 0.02, 100, 20)
    assert cfg.tree.estimator == "unbiased" and cfg.scoring.restrict == "renorm"
    assert (cfg.screen.G, cfg.context.demo_temperature, cfg.context.max_trials) == (32, 0.7, 60)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"tree\.bogus': unknown key"):
        parse_config({"tree": {"bogus": 1}})


def test_bad_value_names_field_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        parse_config({"tree": {"estimator": "naive"}})
    msg = str(err.value)
    assert "tree.estimator" in msg and "'unbiased'" in msg and "'paper'" in msg


def test_unknown_teacher_mode_is_named():
    with pytest.raises(ConfigError, match=r"teachers\.0\.mode"):
        parse_config({"teachers": [{"name": "x", "mode": "self-9c"}]})


def test_external_teacher_needs_a_model():
    with pytest.raises(ConfigError, match="needs a 'model'"):
        parse_config({"teachers": [{"name": "x", "mode": "external"}]})


def test_model_option_names_are_checked_with_the_config_for_every_model():
    # a misspelt teacher option is refused when the config is read, not when phase 2 loads it
    with pytest.raises(ConfigError, match=r"teachers\.0\.model': unknown toy backend option"
                                          r"\(s\) \['tlt'\]; allowed: .*tilt"):
        parse_config({"teachers": [{"name": "x", "mode": "external",
                                    "model": {"backend": "toy", "options": {"tlt": "helpful"}}}]})
    with pytest.raises(ConfigError, match=r"teachers\.0\.source': unknown hf backend option"):
        parse_config({"teachers": [{"name": "x", "mode": "self-1c-src",
                                    "source": {"options": {"dtype": "float32"}}}]})
    # options left from another backend are named as such
    with pytest.raises(ConfigError) as err:
        parse_config({"student": {"backend": "vllm", "options": {"matmul_dtype": "bfloat16"}}})
    msg = str(err.value)
    assert "'student': unknown vllm backend option(s) ['matmul_dtype']" in msg
    assert "an option of the hf backend" in msg and "\n" not in msg
    # an option of no backend gets no such hint; every backend's real options pass
    with pytest.raises(ConfigError) as err:
        parse_config({"student": {"options": {"bogus": 1}}})
    assert "an option of" not in str(err.value)
    parse_config({"student": {"backend": "vllm", "options": {"kv_cache_gib": 1,
                                                             "max_num_seqs": 8}}})


@pytest.mark.parametrize("value", ["yes", 1, "on", 0.0])
def test_switches_take_true_or_false_only(value):
    with pytest.raises(ConfigError, match=r"tree\.exclude_extremely_hard"):
        parse_config({"tree": {"exclude_extremely_hard": value}})
    with pytest.raises(ConfigError, match=r"student\.trust_remote_code"):
        parse_config({"student": {"trust_remote_code": value}})
    assert parse_config({"tree": {"exclude_extremely_hard": False}}).tree.exclude_extremely_hard \
        is False


def test_the_light_toy_option_list_is_the_loaders():
    from distillscope.models import toy
    from distillscope.models.options import TOY

    assert set(TOY) == toy._MODEL_KEYS | set(toy.WorldParams.__dataclass_fields__)


def test_duplicate_teacher_names_refused():
    with pytest.raises(ConfigError, match="unique"):
        parse_config({"teachers": [{"name": "a"}, {"name": "a"}]})


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tree: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_overrides_and_fingerprint_ignores_teachers(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"tree": {"G": 5}}))
    cfg = load_config(p, {"tree.G": 7, "seed": 3})
    assert cfg.tree.G == 7 and cfg.seed == 3
    with_t = parse_config({"tree": {"G": 7}, "seed": 3, "teachers": [{"name": "t"}]})
    assert with_t.fingerprint() == cfg.fingerprint()
    assert parse_config({"seed": 4}).fingerprint() != parse_config({"seed": 3}).fingerprint()


def test_overrides_enter_lists_by_index_and_name_what_blocks_them(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"tree": {"G": 5}, "task": {"ids": None},
                                 "teachers": [{"name": "a"}, {"name": "b"}]}))
    cfg = load_config(p, {"teachers.1.name": "c", "teachers.-2.name": "z", "task.limit": 2})
    assert [t.name for t in cfg.teachers] == ["z", "c"] and cfg.task.limit == 2
    with pytest.raises(ConfigError, match=r"'teachers\.2' must be an index .* 2 item"):
        load_config(p, {"teachers.2.name": "x"})
    with pytest.raises(ConfigError, match=r"'tree\.G' holds 5"):
        load_config(p, {"tree.G.x": 1})
    with pytest.raises(ConfigError, match=r"'teachers\.--1' must be an index"):
        load_config(p, {"teachers.--1.name": "x"})
    empty = tmp_path / "empty.yaml"
    empty.write_text("# only a comment\n")
    with pytest.raises(ConfigError, match="empty"):
        load_config(empty, {"tree.G": 3})


def test_fingerprint_of_the_defaults_is_pinned_and_later_fields_count_when_set():
    """Run directories record this hash; a change to it (a new field, a new default) makes
    every existing run a different run. Fields added later count only away from their
    default: the value below is the one computed before context.missing_demos existed."""
    base = parse_config({})
    assert base.fingerprint() == "e92a78578b2b310d"
    assert parse_config({"context": {"missing_demos": "paper"}}).fingerprint() == (
        base.fingerprint())
    for other in ("exclude_question", "skip_teacher"):  # not the default (since 2026-12)
        assert parse_config({"context": {"missing_demos": other}}).fingerprint() != (
            base.fingerprint())


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_validates(path):
    load_config(path)


def test_quickstart_yaml_matches_builtin_preset():
    from distillscope.presets import QUICKSTART_SETTINGS, quickstart_config

    assert load_config(ROOT / "configs" / "quickstart.yaml") == quickstart_config()
    assert load_config(ROOT / "configs" / "quickstart-choice.yaml") == quickstart_config("choice")
    assert [k for k, _ in QUICKSTART_SETTINGS] == ["yesno", "choice"]
    yn, mc = (set(quickstart_config(k).task.ids) for k, _ in QUICKSTART_SETTINGS)
    assert len(yn) == len(mc) == 12 and not yn & mc


# ---------------------------------------------------------------------------------------------
def test_depth_windows_are_exponential():
    assert depth_windows(400, 50) == [(0, 50), (50, 150), (150, 350), (350, 400)]
    assert depth_windows(0, 50) == []
    assert depth_windows(10, 50) == [(0, 10)]


def test_select_children_per_window_top_k_and_top_r():
    depth = np.array([0, 0, 0, 60, 60, 60])
    token = np.array([1, 2, 3, 1, 2, 3])
    p_s = np.array([0.5, 0.3, 0.2, 0.6, 0.3, 0.1])
    p_t = np.array([0.1, 0.3, 0.6, 0.6, 0.3, 0.1])  # window 2: teacher == student
    kl = np.zeros(100)
    cands = merge_candidates([depth], [token], [p_s], [p_t], [kl])
    chosen = select_children(cands, 100, base=50, top_k=1, top_r=1)
    # window [0, 50): largest |gkd| and largest |dP| among tokens 1..3
    ell = np.log(p_s[:3]) - np.log(p_t[:3])
    g = np.abs(p_s[:3] * (ell - kl[0]))
    assert (0, int(token[np.argmax(g)])) in chosen
    assert (0, int(token[np.argmax(np.abs(p_t[:3] - p_s[:3]))])) in chosen
    # window [50, 150): all scores tie at zero -> deterministic lowest token
    assert [c for c in chosen if c[0] == 60] == [(60, 1)]


def test_merge_takes_max_over_teachers():
    d, k = np.array([0, 0]), np.array([1, 2])
    ps = np.array([0.5, 0.5])
    c = merge_candidates([d, d], [k, k], [ps, ps], [np.array([0.5, 0.5]), np.array([0.9, 0.1])],
                         [np.zeros(1), np.zeros(1)])
    assert np.allclose(c.dprob_C, [0.4, 0.4])
    assert c.gkd_C[0] > 0


def test_import_is_light_and_public_api_resolves():
    import subprocess
    import sys

    code = ("import sys, distillscope; heavy = [m for m in ('torch', 'transformers', 'ray', "
            "'vllm') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    import distillscope

    assert callable(distillscope.run) and callable(distillscope.write_report)
    with pytest.raises(AttributeError):
        distillscope.nope  # noqa: B018


def test_backup_estimator_is_refused_not_silently_unbiased():
    # it used to be accepted and then counted exactly like 'unbiased' while labelled 'backup'
    with pytest.raises(ConfigError, match=r"tree\.estimator.*'backup' is not offered"):
        parse_config({"tree": {"estimator": "backup"}})
    assert parse_config({"tree": {"estimator": "paper"}}).tree.estimator == "paper"


@pytest.mark.parametrize("field,value", [("temperature", 0.7), ("top_p", 0.95)])
def test_sampler_must_be_the_plain_softmax_every_gradient_assumes(field, value):
    with pytest.raises(ConfigError, match=rf"sampling\.{field}.*must be 1\.0 \(got {value}\)"):
        parse_config({"sampling": {field: value}})
    assert getattr(parse_config({"sampling": {field: 1.0}}).sampling, field) == 1.0


def test_each_teacher_gets_its_own_top_tokens():
    """Appendix D: per window, each teacher's own top_k / top_r. A teacher that diverges a lot
    at token 1 must not crowd out another teacher's (smaller) top token 2."""
    from distillscope.budget import select_per_teacher

    d, k = np.array([0, 0, 0]), np.array([1, 2, 3])
    ps = np.array([0.4, 0.3, 0.3])
    loud = np.array([0.01, 0.3, 0.69])  # far from the student at 1 (and 3)
    quiet = np.array([0.4, 0.36, 0.24])  # its largest move is at token 2
    kl = [np.zeros(1), np.zeros(1)]
    merged = select_children(merge_candidates([d, d], [k, k], [ps, ps], [loud, quiet], kl), 10,
                             base=50, top_k=0, top_r=1)
    per = select_per_teacher([d, d], [k, k], [ps, ps], [loud, quiet], kl, 10, base=50, top_k=0,
                             top_r=1)
    assert (0, 2) not in merged  # the max over teachers picks the loud teacher's token only
    assert (0, 2) in per and set(merged) <= set(per)
    assert per == select_per_teacher([d], [k], [ps], [loud], kl[:1], 10, base=50, top_k=0,
                                     top_r=1) + [(0, 2)]
