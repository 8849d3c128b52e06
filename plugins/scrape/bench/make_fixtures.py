"""Generate the benchmark's offline page set: every article of :mod:`articles` in six real-world markup shapes.

    python plugins/scrape/bench/make_fixtures.py [OUT_DIR]     # default: plugins/scrape/bench/fixtures

Writes ``NAME.html`` (the page's bytes, in the charset its shape uses), ``NAME.txt`` (the true article body,
UTF-8, one paragraph or list item a line) and ``manifest.json``: the format ``quality.py`` reads. The shapes
are the ones that lost or garbled articles on real pages (issue 21):

* ``modern``: an HTML5 article among navigation, an ad slot, related links, a newsletter box, comments, a footer;
* ``wordpress``: ``category-native-advertising`` on ``<body>`` and the wrapper, a pull quote repeating a sentence;
* ``tables``: laid out in table cells with ``<font>`` and ``<br><br>``, in the language's legacy charset, declared;
* ``glued``: every sentence in its own ``<span>`` with no space between them;
* ``utf8_declared_latin1``: UTF-8 bytes under ``Content-Type: text/html; charset=iso-8859-1``;
* ``legacy_declared_utf8``: cp1250/cp1252 bytes under ``charset=utf-8``.
"""

from __future__ import annotations

import html
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from articles import ARTICLES, BOILERPLATE, LEGACY_CHARSET

HERE = Path(__file__).parent
Article = dict[str, Any]


def e(text: str) -> str:
    return html.escape(text, quote=False)


def body_lines(article: Article) -> list[str]:
    """The true body: one line per paragraph or list item."""
    lines: list[str] = []
    for paragraph in article["paragraphs"]:
        lines.extend(paragraph if isinstance(paragraph, list) else [paragraph])
    return lines


def blocks(article: Article, *, glued: bool = False) -> str:
    out = []
    for paragraph in article["paragraphs"]:
        if isinstance(paragraph, list):
            out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in paragraph) + "</ul>")
        elif glued:
            from hive_plugin_scrape.summarise import split_sentences

            out.append("<p>" + "".join(f"<span>{e(s)}</span>" for s in split_sentences(paragraph)) + "</p>")
        else:
            out.append(f"<p>{e(paragraph)}</p>")
    return "\n".join(out)


def chrome(lang: str, title: str, content: str, *, body_class: str = "", wrapper_class: str = "story") -> str:
    b = BOILERPLATE[lang]
    nav = " ".join(f'<a href="/{n.lower()}">{e(n)}</a>' for n in b["nav"])
    related = "".join(f'<li><a href="/r{i}">{e(r)}</a></li>' for i, r in enumerate(b["related"]))
    comments = "".join(f'<div class="comment"><p>{e(c)}</p></div>' for c in b["comments"])
    return f"""<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><title>{e(title)} | Gazette</title></head>
<body class="{body_class}">
<header><div class="logo">Gazette</div><nav class="menu">{nav}</nav></header>
<div class="ad ad-leaderboard"><p>{e(b["ad"])}</p></div>
<main><div class="{wrapper_class}"><article>
<h1>{e(title)}</h1>
{content}
<div class="ad ad-inline" data-slot="mid"><p>{e(b["ad"])}</p></div>
</article></div>
<aside class="related"><ul>{related}</ul></aside>
<div class="newsletter"><p>{e(b["newsletter"])}</p></div>
<section id="comments" class="comments">{comments}</section>
</main>
<footer><p>{e(b["footer"])}</p></footer>
</body></html>"""


def modern(lang: str, article: Article) -> tuple[str, str, str | None]:
    return chrome(lang, article["title"], blocks(article)), "utf-8", "utf-8"


def wordpress(lang: str, article: Article) -> tuple[str, str, str | None]:
    first = body_lines(article)[0].split(". ")[0] + "."
    content = (f'<div class="entry-content">{blocks(article)}\n'
               f'<blockquote class="pullquote"><p>{e(first)}</p></blockquote></div>')
    page = chrome(lang, article["title"], content, body_class="single-post category-native-advertising postid-42",
                  wrapper_class="post type-post category-native-advertising")
    return page, "utf-8", "utf-8"


def tables(lang: str, article: Article) -> tuple[str, str, str | None]:
    b = BOILERPLATE[lang]
    nav = "<br>".join(f'<a href="/{n.lower()}">{e(n)}</a>' for n in b["nav"])
    story = "<br><br>\n".join(e(line) for line in body_lines(article))
    charset = LEGACY_CHARSET[lang]
    page = f"""<html><head><meta http-equiv="Content-Type" content="text/html; charset={charset}">
<title>{e(article["title"])}</title></head><body bgcolor="#ffffff">
<table width="100%" border="0" cellpadding="4"><tr>
<td width="160" valign="top" bgcolor="#dddddd">{nav}</td>
<td valign="top"><font face="Arial" size="4"><b>{e(article["title"])}</b></font><br>
<font face="Arial" size="2">{story}</font></td></tr></table>
<table width="100%"><tr><td><font size="1">{e(b["footer"])}</font></td></tr></table></body></html>"""
    return page, charset, charset


def glued(lang: str, article: Article) -> tuple[str, str, str | None]:
    return chrome(lang, article["title"], blocks(article, glued=True)), "utf-8", "utf-8"


def utf8_declared_latin1(lang: str, article: Article) -> tuple[str, str, str | None]:
    page = chrome(lang, article["title"], blocks(article)).replace('<meta charset="utf-8">', "")
    return page, "utf-8", "iso-8859-1"


def legacy_declared_utf8(lang: str, article: Article) -> tuple[str, str, str | None]:
    page = chrome(lang, article["title"], blocks(article)).replace('<meta charset="utf-8">', "")
    return page, LEGACY_CHARSET[lang], "utf-8"


SHAPES: dict[str, Callable[[str, Article], tuple[str, str, str | None]]] = {
    "modern": modern, "wordpress": wordpress, "tables": tables, "glued": glued,
    "utf8_declared_latin1": utf8_declared_latin1, "legacy_declared_utf8": legacy_declared_utf8,
}


def generate(out: Path) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for lang, articles in ARTICLES.items():
        for number, article in enumerate(articles, 1):
            for shape, render in SHAPES.items():
                name = f"{lang}-{number}-{shape}"
                page, encoding, header = render(lang, article)
                (out / f"{name}.html").write_bytes(page.encode(encoding))
                (out / f"{name}.txt").write_text("\n".join(body_lines(article)) + "\n", encoding="utf-8")
                manifest.append({"page": f"{name}.html", "body": f"{name}.txt", "language": lang,
                                 "content_type": f"text/html; charset={header}" if header else "text/html",
                                 "shape": shape})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "fixtures"
    print(f"{len(generate(target))} pages written to {target}")
