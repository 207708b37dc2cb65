"""compare.html in headless Chromium: it renders (not blank), logs nothing (no CSP violation:
it has no script at all), and a hostile model string in a setting label stays text. The
injection check is shown to be able to fail on the same page with the label un-escaped."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from synthetic_run import SCRIPT_TOKEN, make_synthetic_run  # noqa: E402
from test_report_browser import (  # noqa: E402
    CHROMIUM,
    ESCAPED_SCRIPT,
    alert_fired,
    chromium,
    console_messages,
    title,
)

from distillscope.report.compare_page import write_compare  # noqa: E402

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs /usr/bin/chromium (Debian package 'chromium')")
HOOK = ("<script>window.alert = function (x) { document.documentElement.setAttribute("
        '"data-alert", String(x)); };</script>')


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cmpb")
    a = make_synthetic_run(d / "a")
    b = make_synthetic_run(d / "b", seed=1)
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    cfg["student"]["model"] = SCRIPT_TOKEN
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    return write_compare([a, b], d / "out", n_boot=200, n_perm=200)


def test_compare_page_renders_cleanly(page, tmp_path):
    dom, err = chromium(page.as_uri(), tmp_path / "p1", "--dump-dom")
    assert console_messages(err) == []
    assert title(dom) == "distillscope compare · 2 settings"
    assert ESCAPED_SCRIPT in dom and "<script>alert(1)</script>" not in dom
    assert dom.count("<details") == 2 and "Table 1 · gkd" in dom
    shot = tmp_path / "compare.png"
    chromium(page.as_uri(), tmp_path / "p2", "--window-size=1280,2400", f"--screenshot={shot}")
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (2400, 1280) and pixels.std() > 0.05


def test_hostile_label_is_inert_and_the_check_can_fail(page, tmp_path):
    raw = page.read_text(encoding="utf-8")
    csp = re.search(r'<meta http-equiv="Content-Security-Policy"[^>]*>', raw).group(0)
    hooked = tmp_path / "hooked.html"
    hooked.write_text(raw.replace(csp, HOOK, 1), encoding="utf-8")  # no CSP: escaping alone
    dom, _ = chromium(hooked.as_uri(), tmp_path / "p1", "--dump-dom")
    assert alert_fired(dom) is None
    hooked.write_text(raw.replace(csp, HOOK, 1).replace(ESCAPED_SCRIPT, SCRIPT_TOKEN),
                      encoding="utf-8")
    dom, _ = chromium(hooked.as_uri(), tmp_path / "p2", "--dump-dom")
    assert alert_fired(dom) == "1"  # an unescaped label would run: the detector works
    hooked.write_text(raw.replace(ESCAPED_SCRIPT, SCRIPT_TOKEN), encoding="utf-8")
    dom, err = chromium(hooked.as_uri(), tmp_path / "p3", "--dump-dom")
    assert any("Content Security Policy" in m for m in console_messages(err))  # and is blocked
