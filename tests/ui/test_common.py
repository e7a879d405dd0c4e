"""What both apps share (`align.ui.common`): model text as escaped HTML through jinja2, and as markdown that
renders but carries no markup. (The browser tests check the rendered result in chromium.)"""

from __future__ import annotations

from align.ui.common import conversation_html, inert_markdown, text_html


def test_text_and_conversations_are_escaped():
    assert text_html('<b onclick="x">&</b>') == ('<div class="align-text">&lt;b onclick=&#34;x&#34;&gt;&amp;&lt;/b&gt;'
                                                  "</div>")
    page = conversation_html([{"role": "user", "content": "<script>1</script>"}, {"role": "assistant", "content": "hi"}])
    assert page.count('align-role">') == 2 and "<script>" not in page and "&lt;script&gt;1&lt;/script&gt;" in page


def test_inert_markdown_escapes_markup_outside_code_only():
    reply = ("**bold** <img src=x onerror=alert(1)> & `<i>kept</i>`\n"
             "```html\n<script>in a block</script>\n```\n"
             "<script>after</script>\n")
    out = inert_markdown(reply)
    assert out.startswith("**bold** &lt;img src=x onerror=alert(1)> &amp; `<i>kept</i>`\n")  # markdown stays
    assert "```html\n<script>in a block</script>\n```\n" in out  # the renderer escapes code itself
    assert out.endswith("&lt;script>after&lt;/script>\n")
    # a block still streaming (no closing fence yet) is code to the end; a longer fence closes only on its own kind
    assert inert_markdown("````\n<b>\n```\n<b>") == "````\n<b>\n```\n<b>"
    assert inert_markdown("~~~\n<b>\n~~~\n<b>") == "~~~\n<b>\n~~~\n&lt;b>"
    assert "<" not in inert_markdown("<<a>> <!-- x --> <svg/onload=1>")
