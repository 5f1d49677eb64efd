"""`kreport serve`: watch runs in the browser while they train.

The server is werkzeug's threaded WSGI server (TensorBoard serves its
dashboard with it too, and tensorboard already depends on it): a local
viewer needs threads for a few open pages, routing, and safe file serving,
not an async framework. Every endpoint reads; none writes or runs anything.
"""

import ipaddress
import os
import posixpath
import re
import socket
import threading

import click

from kreport.common import fail

DEFAULT_PORT = 6007  # TensorBoard's is 6006
# A run's name in URLs: what is left of its directory name after this.
_URL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Percent-encoded "/" or "\" in a request's raw path: a path must not be
# smuggled past the router as one segment.
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c)", re.IGNORECASE)


def url_safe(name):
    """A run's name as a URL segment."""
    return _URL_UNSAFE.sub("-", name).strip("-.") or "run"


def resolve_run_file(run_dir, path):
    """The real path of file `path` (from a URL) inside `run_dir`, or None
    when it is not a regular file there: `..`, absolute paths, backslashes,
    NUL bytes and symlinks that lead out of the run directory all give None."""
    if not path or "\\" in path or "\0" in path or path.startswith("/"):
        return None
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    root = os.path.realpath(run_dir)
    candidate = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([candidate, root]) != root or not os.path.isfile(candidate):
        return None
    return candidate


class ServeApp:
    """The WSGI application: an overview of the runs, a live page per run,
    the JSON the pages poll, the runs' files, and plotly.js.

    Args:
        runs: a `serve_runs.RunSet`, or a dict of run key -> `LiveRun`.
        objective, mode: what the overview ranks the runs by (None: as
            `kreport compare` picks it).
        loopback_only: answer only requests whose Host header names a
            loopback address (or localhost), as a server on a loopback
            address should: a web page that points its own domain at
            127.0.0.1 (DNS rebinding) must not read the runs as if it were
            this server's page.
    """

    def __init__(self, runs, loopback_only=True, objective=None, mode=None):
        from werkzeug.routing import Map, Rule

        self._run_set = runs
        self.objective, self.mode = objective, mode
        self.loopback_only = loopback_only
        self.url_map = Map(
            [
                Rule("/", endpoint="overview"),
                Rule("/api/overview", endpoint="overview_data"),
                Rule("/runs/<key>/", endpoint="run_page"),
                Rule("/api/runs/<key>/updates", endpoint="run_updates"),
                Rule("/runs/<key>/files/<path:path>", endpoint="run_file"),
                Rule("/assets/plotly.min.js", endpoint="plotly"),
            ],
            strict_slashes=True,
            merge_slashes=False,  # "files//etc" is a 404, not a redirect to "files/etc"
        )
        self._overview_lock = threading.Lock()
        self._overview_html = None
        self._overview_version = 0

    @property
    def runs(self):
        """Run key -> `LiveRun`, as of now."""
        if isinstance(self._run_set, dict):
            return self._run_set
        return self._run_set.current()

    def __call__(self, environ, start_response):
        from werkzeug.exceptions import BadRequest, HTTPException, MethodNotAllowed, NotFound
        from werkzeug.wrappers import Request

        request = Request(environ)
        try:
            if self.loopback_only and not _names_loopback(environ.get("HTTP_HOST")):
                raise BadRequest("kreport serve: unexpected Host header")
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed(valid_methods=["GET", "HEAD"])
            raw_path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
            if _ENCODED_SEPARATOR.search(raw_path.split("?", 1)[0]):
                raise NotFound()
            endpoint, values = self.url_map.bind_to_environ(environ).match()
            if "key" in values and values["key"] not in self.runs:
                raise NotFound()
            response = getattr(self, endpoint)(request, **values)
        except HTTPException as error:
            response = error.get_response(environ)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Cache-Control", "no-store")
        return response(environ, start_response)

    # pages

    def overview(self, request):
        rows, columns = self._overview_rows()
        return self._page("serve_overview.html.j2", runs=rows, columns=columns)

    def run_page(self, request, key):
        live = self.runs[key]
        return self._page("serve_run.html.j2", key=key, path=live.path, name=key)

    def _page(self, template, **context):
        from werkzeug.wrappers import Response

        from kcallbacks import __version__
        from kreport.render import environment

        html = environment().get_template(template).render(kreport_version=__version__, **context)
        return Response(html, mimetype="text/html")

    # data

    def overview_data(self, request):
        from kreport.render import environment

        rows, columns = self._overview_rows()
        html = environment().get_template("_serve_runs.html.j2").render(runs=rows, columns=columns)
        with self._overview_lock:
            if html != self._overview_html:
                self._overview_html = html
                self._overview_version += 1
            return _json({"version": self._overview_version, "html": html})

    def _overview_rows(self):
        from kreport.serve_runs import overview_rows

        return overview_rows(self.runs, self.objective, self.mode)

    def run_updates(self, request, key):
        generation = request.args.get("generation")
        try:
            version = int(request.args["version"])
        except (KeyError, ValueError):
            version = None
        return _json(self.runs[key].update(generation, version))

    def run_file(self, request, key, path):
        from werkzeug.exceptions import NotFound
        from werkzeug.utils import send_file

        real = resolve_run_file(self.runs[key].path, path)
        if real is None:
            raise NotFound()
        response = send_file(real, request.environ, download_name=posixpath.basename(path))
        # A run's file is data: an HTML or SVG file in a run directory must
        # not run scripts as this server's page (and read the other runs).
        response.headers["Content-Security-Policy"] = "sandbox"
        return response

    def plotly(self, request):
        import plotly.offline
        from werkzeug.wrappers import Response

        response = Response(plotly.offline.get_plotlyjs(), mimetype="text/javascript")
        response.headers["Cache-Control"] = "max-age=3600"  # 4.8 MB, the same all along
        return response


def _json(data):
    import json

    from werkzeug.wrappers import Response

    return Response(json.dumps(data, separators=(",", ":")), mimetype="application/json")


def _listening_socket(host, port):
    """(a socket listening on host:port, its numeric address), or a one-line
    exit 2 (werkzeug would print a paragraph and exit 1 for a port in use)."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listening = socket.socket(family, kind, protocol)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(address)
        listening.listen(64)
    except OSError as error:
        fail(f"cannot listen on {host}:{port} ({error.strerror or error})")
    return listening, address[0]


def _names_loopback(host_header):
    """Whether a Host header ("name", "name:port", "[v6]:port") names this
    machine's loopback interface."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return _is_loopback(host)


def _is_loopback(host):
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-p", "--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to listen on; 0 picks a free one.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address lets other machines read the runs.")
@click.option("--interval", type=click.FloatRange(0.1, 60), default=0.5, show_default=True,
              help="Seconds between two reads of a run directory.")
@click.option("--objective", metavar="METRIC",
              help="The epoch metric the overview ranks the runs by.  "
                   "[default: what the runs' callbacks monitor]")
@click.option("--max", "mode", flag_value="max", help="Higher objective is better.")
@click.option("--min", "mode", flag_value="min", help="Lower objective is better.")
def serve(run_dirs, port, host, interval, objective, mode):
    """Watch the runs in RUN_DIRS in the browser while they train.

    A path that is a run directory, or does not exist yet, is one run. A
    directory that holds runs at any depth (a sweep's `runs/`) is searched
    again every few seconds, so the runs a sweep starts appear as it goes.

    Serves an overview of the runs (state, epoch, best values, the
    hyperparameters that differ, last update), ranked by the objective as
    `kreport compare` ranks a study, and a page per run with the report's
    charts and tables, which
    update in place as the run is written: new epochs, per-batch losses and
    events are appended to the charts within a second or two, keeping your
    zoom. A resumed run (its logs cut back to a snapshot) is redrawn; a run
    directory that does not exist yet is shown once it does. Works offline:
    plotly.js comes from the server itself.

    The server only reads: the run directories, and nothing outside them
    (paths that leave a run directory get 404). It listens on 127.0.0.1
    unless --host says otherwise. Stop it with Ctrl-C.

    Example: kreport serve runs/exp1 runs/exp2 --port 6007
    """
    import logging

    from werkzeug.serving import make_server

    from kcallbacks.run_format import MANIFEST
    from kreport.live import LiveRun
    from kreport.serve_runs import RunSet

    # Pages poll every second: one log line per request would drown the terminal.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    seen, unique = set(), []
    for path in run_dirs:
        if os.path.exists(path) and not os.path.isdir(path):
            fail(f"{path}: not a directory")
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append(path)
    runs = RunSet(unique, lambda path, key: LiveRun(path, key, min_interval=interval))
    for path in unique:
        if path in runs.roots:
            click.echo(f"kreport: {path}: showing the runs under it as they appear", err=True)
        elif not os.path.isfile(os.path.join(path, MANIFEST)):
            click.echo(f"kreport: warning: {path}: not a run directory yet; shown once it is", err=True)
    if not _is_loopback(host):
        click.echo(
            f"kreport: warning: listening on {host}: anyone who can reach this machine can read these runs",
            err=True,
        )
    listening, numeric_host = _listening_socket(host, port)
    # The numeric address: werkzeug picks the socket family from it.
    server = make_server(
        numeric_host, port,
        ServeApp(runs, loopback_only=_is_loopback(host), objective=objective, mode=mode),
        threaded=True,
        fd=listening.fileno(),
    )
    shown_host = f"[{host}]" if ":" in host else host
    count = len(runs.current())
    click.echo(f"kreport: serving {count} run{'s' if count != 1 else ''} at "
               f"http://{shown_host}:{server.port}/ (Ctrl-C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    click.echo("kreport: stopped", err=True)
