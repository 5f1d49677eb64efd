"""Turns figures and a template into one self-contained HTML page.

The page embeds plotly.js (the bundle inside plotly's wheel) once, and the
figures as one JSON document, so it opens offline and asks the network for
nothing. Jinja2 autoescapes every value put into the templates.
"""

import datetime
import functools
import json

import jinja2

from kcallbacks import __version__
from kreport import analysis

# Inside <script>, "</script>" or "<!--" in a string would end or bend the
# script; as JSON escapes these characters mean the same to JSON.parse.
_SCRIPT_SAFE = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


@functools.cache
def environment():
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("kreport.templates", "."),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty_json"] = lambda value: json.dumps(
        value, indent=2, sort_keys=True, default=repr
    )
    env.filters["value"] = analysis.format_value
    env.filters["time"] = analysis.format_time
    env.filters["duration"] = analysis.format_duration
    return env


def figures_json(figures):
    """The figures (plotly figure specs, see `charts`) as JSON safe to put
    inside <script>."""
    import plotly.io

    encoded = plotly.io.json.to_json_plotly(figures)
    return encoded.translate(_SCRIPT_SAFE)


def script_json(value):
    """`value` as JSON safe to put inside <script>."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).translate(_SCRIPT_SAFE)


def render_page(template, figures, **context):
    """Renders `template` with the plotly bundle and `figures` embedded; the
    template places figure i in the element with id `chart-i`."""
    import plotly.offline

    return environment().get_template(template).render(
        plotly_js=plotly.offline.get_plotlyjs(),
        figures_json=figures_json(figures),
        chart_ids=[f"chart-{i}" for i in range(len(figures))],
        kreport_version=__version__,
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        **context,
    )
