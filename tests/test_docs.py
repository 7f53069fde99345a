"""The built docs site in a real browser: KaTeX typesets the maths, the API page shows show_doc signatures,
and no request the pages make leaves 127.0.0.1.

`make docs` builds `_docs/` before pytest runs; the test builds it only when it is missing. It needs Debian's
chromium: installed here when missing if running as root with apt-get, else the tests are skipped (with -ra,
pytest prints why). Chromium runs headless with --dump-dom, so the DOM it prints is the one after JavaScript ran.
"""
import html, json, os, re, shutil, subprocess, sys, threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "_docs"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-features=AutofillServerCommunication",
         "--virtual-time-budget=10000",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]  # nothing can leave the machine, even by mistake


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = shutil.which("chromium")
    if not exe and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        r = subprocess.run("apt-get update -q && apt-get install -y -q chromium", shell=True, env=env, capture_output=True, text=True)
        if r.returncode:
            pytest.fail(f"could not install chromium with apt-get:\n{(r.stdout + r.stderr)[-2000:]}")
        exe = shutil.which("chromium")
    if not exe:
        pytest.skip("the docs browser test needs Debian's chromium: `apt-get install chromium` (as root), then rerun")
    return exe


@pytest.fixture(scope="session")
def site() -> Path:
    if not (DOCS / "index.html").exists():
        subprocess.run([sys.executable, str(ROOT / "tools" / "build_docs.py")], cwd=ROOT, check=True)
    return DOCS


@pytest.fixture(scope="session")
def server(site):
    "Serve `_docs/` on 127.0.0.1 from a thread; yields the base URL and the (path, status) of each request."
    served = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(site), **kwargs)

        def log_request(self, code="-", size="-"):
            served.append((urlsplit(self.path).path, int(code) if isinstance(code, int) else 0))

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/", served
    httpd.shutdown()
    httpd.server_close()


def page_requests(netlog: Path, origin: str) -> list[str]:
    "The URLs the page asked for: the page itself, and each request it initiated (not Chromium's own traffic)."
    events = json.loads(netlog.read_text())
    start = events["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    jobs = [e["params"] for e in events["events"] if e["type"] == start and "url" in e.get("params", {})]
    return [p["url"] for p in jobs if p.get("initiator") == origin or p.get("request_type") == "main frame"]


def load(chromium, server, page: str, tmp_path) -> tuple[str, str]:
    "Open a page in headless Chromium; return its DOM after JavaScript ran, and the DOM's text."
    base, served = server
    netlog = tmp_path / f"{page.replace('/', '_')}.netlog.json"
    r = subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--log-net-log={netlog}", "--dump-dom", base + page],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "</html>" in r.stdout, f"chromium failed on {page}:\n{r.stderr[-3000:]}"
    urls = page_requests(netlog, base.rstrip("/"))
    assert base + page in urls, f"the net log does not show the page itself: {urls}"
    assert all(urlsplit(u).hostname == "127.0.0.1" for u in urls), f"{page} asked another host for: {[u for u in urls if urlsplit(u).hostname != '127.0.0.1']}"
    missing = sorted({p for p, code in served if code >= 400 and p != "/favicon.ico"})
    assert not missing, f"the server could not serve: {missing}"
    assert "/site_libs/katex/katex.min.js" in {p for p, _ in served}, "KaTeX was not loaded from the site"
    return r.stdout, html.unescape(re.sub(r"<[^>]+>", "", r.stdout))


def assert_typeset(dom: str, page: str):
    "Every maths span of the page holds KaTeX's output, and KaTeX reported no error."
    spans, typeset = dom.count('class="math '), len(re.findall(r'class="katex"', dom))
    assert spans > 0, f"{page} has no maths to typeset"
    assert typeset >= spans, f"{page}: KaTeX typeset {typeset} of {spans} maths spans"
    errors = re.findall(r'class="katex-error"[^>]*title="([^"]*)"', dom)
    assert not errors, f"{page}: KaTeX could not parse: {errors[:5]}"


def api_page(site: Path) -> str:
    "The page of the paths notebook: paths.html (nbdev's module name), else the notebook's own name."
    found = sorted(p.name for p in site.glob("*paths.html"))
    assert found, f"no paths page in {site}: {sorted(p.name for p in site.glob('*.html'))}"
    return "paths.html" if "paths.html" in found else found[0]


def test_home_page_maths(chromium, server, tmp_path):
    dom, _ = load(chromium, server, "index.html", tmp_path)
    assert_typeset(dom, "index.html")


def test_api_page(chromium, server, site, tmp_path):
    page = api_page(site)
    dom, text = load(chromium, server, page, tmp_path)
    assert_typeset(dom, page)
    assert 'id="gaussianpath"' in dom and "GaussianPath" in text
    assert re.search(r"def convert\(", text), "no show_doc signature of convert on the paths page"


def screenshot(chromium, server, page: str, tmp_path, size=(1280, 1000)):
    "A headless-Chromium screenshot of `page` as an (H, W, 3) uint8 array; the PNG stays in tmp_path for a human to look at."
    base, _ = server
    png = tmp_path / f"{page.replace('/', '_')}.png"
    r = subprocess.run([chromium, *FLAGS, "--hide-scrollbars", f"--window-size={size[0]},{size[1]}", f"--user-data-dir={tmp_path / 'profile'}",
                        f"--screenshot={png}", base + page], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and png.exists(), f"chromium could not take a screenshot of {page}:\n{r.stderr[-3000:]}"
    import numpy as np
    from PIL import Image
    return np.asarray(Image.open(png).convert("RGB"))


def assert_layout(img, page: str):
    "The page looks like a docs page: a blue navbar, ink (text) in the sidebar, the main column and the table of contents."
    h, w, _ = img.shape
    ink = lambda y0, y1, x0, x1: float((img[y0:y1, x0:x1].astype(int).sum(-1) < 3 * 140).mean())   # share of dark pixels
    bar = img[5:40, 100:900].reshape(-1, 3).mean(0)
    assert bar[2] > bar[0] + 60 and bar[2] > 150, f"{page}: no blue navbar at the top (mean colour {bar.round()})"
    assert float((img[60:].min(-1) > 235).mean()) > 0.6, f"{page}: the body is not mostly white background"
    for name, box in {"sidebar": (60, h, 0, 270), "main column": (60, h, 320, 970), "table of contents": (60, 300, 1010, w)}.items():
        share = ink(*box)
        assert 0.005 < share < 0.5, f"{page}: the {name} has {share:.1%} dark pixels; expected text there"


def test_screenshots(chromium, server, site, tmp_path):
    "Home page and the paths notebook page, rendered at 1280x1000, have the docs layout with text in every column."
    for page in ("index.html", api_page(site)):
        assert_layout(screenshot(chromium, server, page, tmp_path), page)
