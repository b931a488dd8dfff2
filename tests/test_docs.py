"""The documentation finds itself: every relative link and ``#anchor`` in README.md and
docs/*.md leads somewhere; every setting, route and metric the service has is in the table of
the page the README's map names for it; every page is on the map; the README stays a front
page. No network, no Redis: external links are not fetched."""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from presence.metrics import MULTIPROCESS_DIR_VARIABLE, Metrics
from presence.settings import Settings
from tests.test_openapi import DOCUMENT

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
CONFIGURATION = DOCS / "configuration.md"
API = DOCS / "api.md"
OPERATIONS = DOCS / "operations.md"

README_MAX_LINES = 260

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) or ![alt](target), the text possibly over several lines and holding one
# level of brackets; the target optionally in <...> and followed by a "title".
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^\s()<>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HTML_ANCHOR = re.compile(r"<a\s[^>]*\b(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def relative(path: Path) -> str:
    return os.path.relpath(path, ROOT)


def prose(text: str) -> str:
    """The text with fenced code blocks blanked out (their lines kept, empty)."""
    lines, fence = [], ""
    for line in text.split("\n"):
        opening = FENCE.match(line)
        if fence:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = ""
            lines.append("")
        elif opening:
            fence = opening.group(1)
            lines.append("")
        else:
            lines.append(line)
    return "\n".join(lines)


def rendered(heading: str) -> str:
    """A heading's text as GitHub renders it: code spans as their content, links as their
    text, without HTML tags or emphasis marks."""
    spans: list[str] = []

    def keep(match: re.Match[str]) -> str:
        spans.append(match.group(2).strip())
        return f"\0{len(spans) - 1}\0"

    text = CODE_SPAN.sub(keep, heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[*~]+|(?<!\w)_+|_+(?!\w)", "", text)
    return re.sub(r"\0(\d+)\0", lambda match: spans[int(match.group(1))], text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase; every character but letters, digits, marks,
    spaces, hyphens and underscores dropped; each space a hyphen."""
    text = rendered(heading).strip().lower()
    kept = "".join(
        char
        for char in text
        if char in " -_" or unicodedata.category(char)[0] in "LNM"  # letters, numbers, marks
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file: its headings' slugs (the second heading with a slug
    gets ``-1``, the third ``-2``, as GitHub numbers them) and explicit HTML anchors."""
    text = prose(path.read_text(encoding="utf-8"))
    found: set[str] = set(HTML_ANCHOR.findall(text))
    occurrences: dict[str, int] = {}
    for line in text.split("\n"):
        heading = HEADING.match(line)
        if heading is None:
            continue
        base = result = slug(heading.group(2))
        while result in occurrences:
            occurrences[base] += 1
            result = f"{base}-{occurrences[base]}"
        occurrences[result] = 0
        found.add(result)
    return found


def link_targets(path: Path) -> Iterator[str]:
    """The target of every link and image of a Markdown file, outside code."""
    text = "\n".join(
        CODE_SPAN.sub("", line) for line in prose(path.read_text(encoding="utf-8")).split("\n")
    )
    for match in INLINE_LINK.finditer(text):
        yield match.group(1)
    yield from REFERENCE_DEFINITION.findall(text)


def broken_links(path: Path) -> list[str]:
    """What is wrong with the links of one page, one line per broken link."""
    problems = []
    for target in link_targets(path):
        if SCHEME.match(target):
            continue  # http(s), mailto: never fetched
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not target:
            problems.append("an empty link")
        elif not linked.exists():
            problems.append(f"{target}: no file {relative(linked)}")
        elif anchor and linked.suffix != ".md":
            problems.append(f"{target}: an anchor into a file that is not Markdown")
        elif anchor and unquote(anchor) not in anchors(linked):
            problems.append(f"{target}: no heading of {relative(linked)} has the anchor #{anchor}")
    return problems


def table_rows(path: Path) -> Iterator[list[str]]:
    """The cells of every table row of a Markdown file (header and separator rows too)."""
    for line in prose(path.read_text(encoding="utf-8")).split("\n"):
        if line.startswith("|"):
            yield [cell.strip() for cell in line.strip().strip("|").split("|")]


def first_column(path: Path) -> set[str]:
    """The code spans of the first cell of every table row of a page."""
    return {span for row in table_rows(path) for _, span in CODE_SPAN.findall(row[0])}


# -- links and anchors -----------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_every_link_and_anchor_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_anchors_follow_githubs_rules() -> None:
    assert slug("The webhook receiver: `POST /webhooks/sync`") == (
        "the-webhook-receiver-post-webhookssync"
    )
    assert slug("A reconnect storm: `presence simulate --storm`") == (
        "a-reconnect-storm-presence-simulate---storm"
    )
    assert slug("Retries: the `#rc=3&rp=ct,rt,5xx` fragment") == "retries-the-rc3rpctrt5xx-fragment"
    assert slug("`PRESENCE_REDIS_WAIT_REPLICAS=N`") == "presence_redis_wait_replicasn"
    assert slug("**Bold** and [a link](x.md) in _it_") == "bold-and-a-link-in-it"
    assert slug("Déjà vu, 2 + 3 = 5?") == "déjà-vu-2--3--5"


def test_duplicate_headings_are_numbered_and_code_is_not_a_heading(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Logs\n\n## Logs\n\n```sh\n# Logs\n```\n\n### Logs\n", encoding="utf-8"
    )
    assert anchors(page) == {"title", "logs", "logs-1", "logs-2"}


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## Far away\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Here\n\n"
        "[ok](#here), [ok](other.md#far-away), [ok](other.md), [ok](https://example.com/x#y)\n"
        "[gone](#there) and [a link over\ntwo lines](missing.md), ![img](nothing.png)\n"
        "[wrong](other.md#far-away-1), `[code](is-not-a-link.md)`\n\n"
        "```md\n[also code](not-a-link.md)\n```\n",
        encoding="utf-8",
    )
    assert [problem.split(":")[0] for problem in broken_links(page)] == [
        "#there",
        "missing.md",
        "nothing.png",
        "other.md#far-away-1",
    ]


def test_every_docs_page_is_on_the_readmes_map_and_says_what_it_holds() -> None:
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for target in link_targets(README)
        if not SCHEME.match(target)
    }
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"{relative(page)} is not linked from README.md"
        lines = page.read_text(encoding="utf-8").split("\n")
        assert lines[0].startswith("# "), f"{relative(page)} does not start with its title"
        assert lines[1] == "", f"{relative(page)}: no blank line after its title"
        assert lines[2].strip(), f"{relative(page)}: no statement of what it holds after its title"


# -- settings, routes, metrics ---------------------------------------------------------------


def test_every_setting_is_in_the_configuration_table() -> None:
    prefix = Settings.model_config["env_prefix"]
    settings = {prefix + name.upper() for name in Settings.model_fields}
    documented = {name for name in first_column(CONFIGURATION) if name.startswith(prefix)}
    assert sorted(settings - documented) == [], f"missing from {relative(CONFIGURATION)}"
    assert sorted(documented - settings) == [], "documented, but not a setting"


def test_every_route_is_in_the_api_pages_table() -> None:
    methods = {"get", "post", "put", "patch", "delete"}
    routes = {
        f"{method.upper()} {path}"
        for path, operations in DOCUMENT["paths"].items()
        for method in operations
        if method in methods
    }
    documented = {span for span in first_column(API) if re.match(r"[A-Z]+ /", span)}
    assert sorted(routes - documented) == [], f"missing from {relative(API)}"
    assert sorted(documented - routes) == [], "documented, but not a route"


def test_every_metric_is_in_the_operations_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROCESS_DIR_VARIABLE, raising=False)  # one process: every family
    metrics = Metrics()
    exported = {
        family.name + "_total" if family.type == "counter" else family.name
        for family in metrics.registry.collect()
    }
    assert "presence_webhooks_total" in exported
    documented = first_column(OPERATIONS)
    # The process collector's families (process_cpu_seconds_total, ...) are one row.
    missing = {
        name
        for name in exported
        if name not in documented and ("process_*" not in documented or name[:8] != "process_")
    }
    assert sorted(missing) == [], f"missing from {relative(OPERATIONS)}"
    listed = {name for name in documented if name.startswith("presence_")}
    assert sorted(listed - exported) == [], "documented, but not exported"


# -- the front page --------------------------------------------------------------------------


def test_the_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines: move what is not a first read to a page of docs/"
    )
