"""Build the docs site into `_docs/`: `.venv/bin/python tools/build_docs.py` from anywhere.

With a `quarto` binary this is `nbdev-docs`. Without one (the usual case here): nbdev processes `nbs/` into
`_proc/` (what `nbdev-proc-nbs` does: it runs the show_doc cells), smalldocs renders `_proc/` with
`nbs/_quarto.yml` into `_docs/`, KaTeX comes from the npm registry into `_docs/site_libs/katex/`, and a link
checker fails the build on a broken internal link or on anything the pages would load from another host.
"""
import base64, hashlib, json, os, re, shutil, subprocess, sys, tarfile, tempfile, time, urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "_docs"  # nbdev's doc_path
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffkit-katex"
# smalldocs warnings about Quarto-only settings that _quarto.yml keeps for `nbdev-docs`; broken links are
# left to `check_site`, which checks the written pages instead (nbdev links pages by module name).
QUIET = re.compile(r"format-links|format commonmark|keep-md|html-math-method|output-file is not read|broken link")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)


def process_notebooks() -> Path:
    "Do what `nbdev-proc-nbs --file-re '\\.(?:ipynb|qmd|html)$'` does, without its attempt to download Quarto."
    from nbdev.quarto import refresh_quarto_yml
    from nbdev.serve import proc_nbs

    refresh_quarto_yml()  # nbs/nbdev.yml: title, site-url and output-dir from pyproject.toml
    return proc_nbs(file_re=r"\.(?:ipynb|qmd|html)$")  # -> _proc/


def render(proc: Path):
    "Render the processed notebooks with smalldocs, pages named by their `output-file` as Quarto names them."
    import smalldocs.site as sd

    read = sd.Site.read

    def read_named(self, src):  # nbdev sets output-file (paths.html for 01_paths.ipynb); smalldocs ignores it
        page = read(self, src)
        if page.front.get("output-file"):
            page.out = page.src.parent / page.front["output-file"]
        return page

    sd.Site.read = read_named
    project = sd.load(proc)
    names = [p.relative_to(proc).as_posix() for p in proc.rglob("*.ipynb")]
    sidebar = project.website.get("sidebar")
    if isinstance(sidebar, dict):  # leave out a section none of whose globs matches a notebook yet
        sidebar["contents"] = [c for c in sd.as_list(sidebar.get("contents")) if not isinstance(c, dict) or "section" not in c
                               or c.get("href") or any(sd.glob_match(n, str(g)) for g in sd.as_list(c.get("contents")) for n in names)]
    site = sd.Site(project, quiet=True)
    site.out = DOCS
    site.build()
    listed = {id(p) for sb in sd.layout.SiteNav(site).sidebars for item in sb["items"] for p in item.pages()}
    for page in site.pages.values():
        if id(page) not in listed:
            print(f"docs warning: {page.src} is in no sidebar section (nbs/sidebar.yml)", file=sys.stderr)
    for w in site.warnings:
        if not QUIET.search(w):
            print(f"smalldocs warning: {w}", file=sys.stderr)
    return site


def katex_dist(version: str) -> Path:
    "KaTeX's `dist/` from the npm package, kept in ~/.cache/diffkit-katex/<version>/."
    dist = CACHE / version / "package" / "dist"
    if (dist / "katex.min.js").exists():
        return dist
    CACHE.mkdir(parents=True, exist_ok=True)
    tgz = CACHE / f"katex-{version}.tgz"
    if shutil.which("npm"):  # npm checks the tarball against the registry's integrity hash
        subprocess.run(["npm", "pack", f"katex@{version}", "--pack-destination", str(CACHE), "--loglevel=error"],
                       check=True, stdout=subprocess.DEVNULL)
    else:  # the same tarball from the same registry, checked the way npm checks it
        registry = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")
        meta = json.load(urllib.request.urlopen(f"{registry}/katex/{version}", timeout=60))["dist"]
        data = urllib.request.urlopen(meta["tarball"], timeout=60).read()
        if "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode() != meta["integrity"]:
            sys.exit(f"build_docs: katex-{version}.tgz does not match the registry's integrity hash")
        tgz.write_bytes(data)
    tmp = tempfile.mkdtemp(dir=CACHE)
    with tarfile.open(tgz) as t:
        t.extractall(tmp, filter="data")
    shutil.rmtree(CACHE / version, ignore_errors=True)
    os.replace(tmp, CACHE / version)  # the cache holds a whole package or none
    return dist


def localise(site_url: str) -> None:
    "Serve KaTeX from the site, drop the theme's Google Fonts import, and point nbdev's absolute doc links at this copy."
    from smalldocs.layout import KATEX  # https://cdn.jsdelivr.net/npm/katex@<version>/dist

    dist = katex_dist(re.search(r"katex@([\d.]+)", KATEX)[1])
    shutil.copytree(dist, DOCS / "site_libs" / "katex")
    shutil.copy(dist.parent / "LICENSE", DOCS / "site_libs" / "katex" / "LICENSE")
    base = site_url.rstrip("/") + "/" if site_url else None
    for f in DOCS.rglob("*.html"):
        up = "../" * (len(f.relative_to(DOCS).parts) - 1)
        text = f.read_text(encoding="utf-8").replace(KATEX, up + "site_libs/katex")
        if base:
            text = re.sub(f'href="{re.escape(base)}([^"]*)"', lambda m, up=up: f'href="{up}{m[1] or "index.html"}"', text)
        f.write_text(text, encoding="utf-8")
    for css in (DOCS / "site_libs").rglob("*.css"):  # bootswatch themes @import Google Fonts; the fallback fonts do
        css.write_text(re.sub(r"@import\s+url\(\s*['\"]?(?:https?:)?//[^)]*\)\s*;?", "", css.read_text(encoding="utf-8")), encoding="utf-8")


class Refs(HTMLParser):
    "The ids of a page, its links, and the URLs it would load from elsewhere."

    def __init__(self):
        super().__init__()
        self.ids, self.links, self.external, self.in_script = set(), [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.in_script = tag == "script"
        self.ids.update(v for k, v in attrs if k in ("id", "name") and v)
        for k in ("href", "src"):
            v = (a.get(k) or "").strip()
            if not v or v.startswith(("#", "data:", "mailto:", "javascript:")):
                continue
            if not EXTERNAL.match(v):
                self.links.append(v)
            elif k == "src" or (tag == "link" and a.get("rel") not in ("canonical", "alternate")):
                self.external.append(v)

    def handle_endtag(self, tag):
        self.in_script = False

    def handle_data(self, data):
        if self.in_script:  # `import x from "https://..."` in an inline module script (mermaid)
            self.external += re.findall(r"""\bimport\b[^'"]*['"]((?:https?:)?//[^'"]+)""", data)


def check_site(site: Path) -> list[str]:
    "Every relative link and src resolves to a file (and #id on another page exists); nothing loads from another host."
    pages, problems = {}, []
    for f in sorted(site.rglob("*.html")):
        pages[f.resolve()] = Refs()
        pages[f.resolve()].feed(f.read_text(encoding="utf-8"))
    for f, refs in pages.items():
        name = f.relative_to(site.resolve())
        problems += [f"{name}: loads {u}" for u in refs.external]
        for link in refs.links:
            u = urlsplit(link)
            target = (f.parent / unquote(u.path)).resolve()
            if u.path.endswith("/") or target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                problems.append(f"{name}: broken link {link}")
            elif u.fragment and target in pages and unquote(u.fragment) not in pages[target].ids:
                problems.append(f"{name}: no #{u.fragment} in {target.relative_to(site.resolve())}")
    for css in site.rglob("*.css"):
        problems += [f"{css.relative_to(site)}: loads {u}" for u in re.findall(r"(?:url\(\s*['\"]?|@import\s+['\"])((?:https?:)?//[^'\")]+)", css.read_text(encoding="utf-8"))]
    return problems


def main() -> int:
    t0 = time.time()
    os.chdir(ROOT)
    if shutil.which("quarto"):
        subprocess.run([Path(sys.executable).parent / "nbdev-docs"], check=True)
        print(f"docs: built with Quarto in {time.time() - t0:.1f}s: {DOCS}/index.html")
        return 0
    proc = process_notebooks()
    site = render(proc)
    localise(str(site.project.website.get("site-url") or ""))
    problems = check_site(DOCS)
    for p in problems:
        print(f"docs: {p}", file=sys.stderr)
    if problems or not (DOCS / "index.html").exists():
        print(f"docs: FAILED, {len(problems)} problem(s){'' if (DOCS / 'index.html').exists() else ', and no index.html'}", file=sys.stderr)
        return 1
    print(f"docs: {len(site.pages)} page(s) in {time.time() - t0:.1f}s, links checked: {DOCS}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
