"""report.html in headless Chromium: it renders, its script runs without console messages, the
teacher picker recolours, the tooltip shows S_u data, and hostile token text stays text.

The injection check is shown to be able to fail: the same page with the script token
un-escaped (and the CSP removed) does run the injected code, and the detector sees it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from synthetic_run import SCRIPT_TOKEN, make_synthetic_run  # noqa: E402

from distillscope.report import write_report  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs /usr/bin/chromium (Debian package 'chromium')")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--hide-scrollbars"]
ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"
TITLE = "distillscope report · synthetic-boolq"

# Installed before any other script: records alert() calls and hovers the script token.
HOOK = """<script nonce="{nonce}">
window.alert = function (x) {{ document.documentElement.setAttribute("data-alert", String(x)); }};
window.addEventListener("load", function () {{
  var hit = Array.prototype.find.call(document.querySelectorAll(".tk.dp"), function (s) {{
    return s.textContent.indexOf("alert(1)") >= 0; }});
  if (!hit) return;
  var r = hit.getBoundingClientRect();
  hit.dispatchEvent(new MouseEvent("mouseover", {{bubbles: true, clientX: r.left,
                                                  clientY: r.bottom}}));
  document.documentElement.setAttribute("data-tip", document.getElementById("tip").textContent);
}});
</script>"""


def chromium(url: str, profile: Path, *extra: str) -> tuple[str, str]:
    """(stdout, stderr) of one headless Chromium run."""
    profile.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=120)
    return proc.stdout, proc.stderr


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def instrument(page: str, *, unescape: bool = False, keep_csp: bool = True) -> str:
    nonce = re.search(r"'nonce-([A-Za-z0-9_-]+)'", page).group(1)
    csp = re.search(r'<meta http-equiv="Content-Security-Policy"[^>]*>', page).group(0)
    page = page.replace(csp, (csp if keep_csp else "") + HOOK.format(nonce=nonce), 1)
    if unescape:  # simulate a renderer that forgot to escape model text
        page = page.replace(ESCAPED_SCRIPT, SCRIPT_TOKEN)
    return page


def alert_fired(dom: str) -> str | None:
    """The argument of the first alert() call, read from the <html> element's attribute."""
    m = re.search(r'<html[^>]*\sdata-alert="([^"]*)"', dom)
    return m.group(1) if m else None


def title(dom: str) -> str:
    m = re.search(r"<title>(.*?)</title>", dom, re.S)
    return m.group(1) if m else ""


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    run = make_synthetic_run(tmp_path_factory.mktemp("browser") / "run")
    return write_report(run, seed=0, n_boot=300, n_perm=300)


def test_page_renders_and_script_runs_cleanly(report, tmp_path):
    dom, err = chromium(report.as_uri(), tmp_path / "p1", "--dump-dom")
    assert 'data-ready="1"' in dom, "the report's script did not run to the end"
    assert console_messages(err) == []  # no error, no CSP violation, no log
    assert title(dom) == TITLE
    assert ESCAPED_SCRIPT in dom  # the token, serialised as a text node
    assert "<script>alert(1)</script>" not in dom
    assert "PWNED" not in title(dom)
    assert 'class="ds-current">self-1c · gkd<' in dom

    shot = tmp_path / "report.png"
    _, err = chromium(report.as_uri(), tmp_path / "p2", "--window-size=1280,2400",
                      f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 20_000
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (2400, 1280) and pixels.std() > 0.05  # not a blank page


def test_teacher_picker_recolours_from_the_url_hash(report, tmp_path):
    default, _ = chromium(report.as_uri(), tmp_path / "p1", "--dump-dom")
    picked, err = chromium(report.as_uri() + "#teacher=qwen3-8b&method=sampled", tmp_path / "p2",
                           "--dump-dom")
    assert console_messages(err) == []
    assert 'class="ds-current">qwen3-8b · sampled<' in picked

    def styles(dom: str) -> list[str]:
        return re.findall(r'<span class="tk dp" data-n="\d+" style="([^"]*)"', dom)

    assert len(styles(default)) == len(styles(picked)) > 100
    assert styles(default) != styles(picked)


def test_hostile_token_is_text_in_page_and_tooltip(report, tmp_path):
    page = tmp_path / "hooked.html"
    page.write_text(instrument(report.read_text(encoding="utf-8")), encoding="utf-8")
    dom, err = chromium(page.as_uri(), tmp_path / "p1", "--dump-dom")
    assert console_messages(err) == []
    assert alert_fired(dom) is None and title(dom) == TITLE
    tip = re.search(r'data-tip="([^"]*)"', dom)
    assert tip, "the tooltip did not open"
    assert "alert(1)" in tip.group(1) and "P_te (self-1c)" in tip.group(1)
    assert "P\u0302 succ" in tip.group(1) and "SR range" in tip.group(1)

    # escaping alone (without the CSP's help) keeps the token inert
    page.write_text(instrument(report.read_text(encoding="utf-8"), keep_csp=False),
                    encoding="utf-8")
    dom, _ = chromium(page.as_uri(), tmp_path / "p2", "--dump-dom")
    assert alert_fired(dom) is None and title(dom) == TITLE


def test_detector_catches_an_unescaped_token(report, tmp_path):
    raw = report.read_text(encoding="utf-8")
    page = tmp_path / "vulnerable.html"
    page.write_text(instrument(raw, unescape=True, keep_csp=False), encoding="utf-8")
    dom, _ = chromium(page.as_uri(), tmp_path / "p1", "--dump-dom")
    assert alert_fired(dom) == "1"  # the injected alert ran: the check can fail
    # with the CSP in place, the same mistake is blocked (defence in depth) and reported
    page.write_text(instrument(raw, unescape=True, keep_csp=True), encoding="utf-8")
    dom, err = chromium(page.as_uri(), tmp_path / "p2", "--dump-dom")
    assert alert_fired(dom) is None
    assert any("Content Security Policy" in m for m in console_messages(err))


def test_empty_run_page_has_no_script_error(tmp_path):
    (tmp_path / "empty").mkdir()
    page = write_report(tmp_path / "empty", n_boot=20, n_perm=20)
    dom, err = chromium(page.as_uri(), tmp_path / "p1", "--dump-dom")
    assert 'data-ready="1"' in dom and console_messages(err) == []
