"""The HTML view of a report: one self-contained page (inline CSS and JS, no network), and the same view inline in
a notebook. Pure string building from the report's dataclasses: no torch, nothing recomputed.

``page`` lays out the page, ``strip`` the token strips, ``grads`` the parameter-gradient sections, ``data`` the
compact number encoding the page's script decodes, ``assets`` the CSS and JS.
"""

from gradscope.render.html.page import html_fragment, to_html
from gradscope.report.finding import install_html_view

install_html_view(to_html, html_fragment)

__all__ = ["html_fragment", "to_html"]
