"""The framework adapter (middleware/adapter.py): one test per connexion/a2wsgi internal it relies on,
the version check, and how Flask is called (on the event loop by default, or on threads)."""
import asyncio

import pytest

import config
from config import ROOT
from middleware import adapter
from middleware.adapter import FlaskBridge
from tests.conftest import error_of


@pytest.mark.parametrize("value", ["-1", "65", "two"])
def test_request_threads_out_of_range_refuse_to_start(value):
    with pytest.raises(config.ConfigError, match="REQUEST_THREADS"):
        config.load({"APP_ENV": "production", "JWT_SIGNING_KEY_FILE": "/k.pem", "REQUEST_THREADS": value})


def test_handler_threads_serve_the_same_answers(app_with, make_org):
    """The threaded path carries connexion's context into the thread: caller, body, errors."""
    threaded = app_with(request_threads=2)
    org = make_org()
    client = threaded.test_client()
    created = client.post("/patients", json={"branch_id": org.branch_id, "name": "Threaded"}, headers=org.headers)
    assert created.status_code == 201, created.text
    read = client.get(f"/patients/{created.json()['data']['id']}", headers=org.headers)
    assert read.status_code == 200 and read.json()["data"]["name"] == "Threaded"
    assert read.headers["ETag"] == created.headers["ETag"]
    refused = client.post("/patients", content=b"{not json", headers={**org.headers, "Content-Type": "application/json"})
    assert refused.status_code == 400 and error_of(refused)["code"] == "MALFORMED_REQUEST"
    assert client.get("/patients/00000000-0000-0000-0000-000000000000", headers=org.headers).status_code == 404


def test_operations_are_decorated_once(app, client, org_a):
    """connexion would rebuild each view's decorators per request; install() swaps them once the
    views register. If connexion moved that registration, this is where it shows."""
    from connexion.apps.flask import FlaskOperation

    assert client.get("/patients", headers=org_a.headers).status_code == 200
    views = app.app.view_functions
    assert views and not [name for name, view in views.items() if isinstance(view, FlaskOperation)]


def test_swagger_ui_is_served_and_stepped_over_by_api_calls(client, org_a):
    """adapter.SwaggerUI passes on what cannot be one of its paths without running its router; its
    own paths still answer, and a near miss still gets the API's 404."""
    assert client.get("/openapi.json").json()["openapi"].startswith("3.")
    redirect = client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"].endswith("/ui/")
    home = client.get("/ui/")
    assert home.status_code == 200 and "swagger" in home.text.lower()
    assert client.get("/patients", headers=org_a.headers).status_code == 200
    near_miss = client.get("/uix", headers=org_a.headers)
    assert near_miss.status_code == 404 and error_of(near_miss)["code"] == "NOT_FOUND"


def test_spec_documents_are_rendered_once(app_with, monkeypatch):
    """Each anonymous GET of /openapi.yaml re-serialised the whole spec (1.7 s of CPU, resolved, on
    the worker's event loop); the first answer of each document is kept and replayed."""
    import yaml
    rendered = []
    original = adapter.as_yaml

    def counted(document):
        rendered.append(1)
        return original(document)

    monkeypatch.setattr(adapter, "as_yaml", counted)
    client = app_with().test_client()
    answers = [client.get("/openapi.yaml") for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3 and len(rendered) == 1
    assert answers[0].content == answers[2].content and answers[2].headers["content-type"].startswith("text/yaml")
    as_json = client.get("/openapi.json")
    assert as_json.json() == client.get("/openapi.json").json()
    assert yaml.safe_load(answers[2].text)["paths"].keys() == as_json.json()["paths"].keys()
    assert client.head("/openapi.json").status_code == 200
    assert client.get("/ui/openapi.json").status_code == 404


def test_a_get_never_reads_the_body(client, org_a, monkeypatch):
    """An operation without a request body gets neither its body nor its form data read; one
    with a JSON body reads the body, and no form data (only a form body carries files)."""
    from connexion.lifecycle import WSGIRequest

    reads = []
    for name in ("get_body", "files"):
        original = getattr(WSGIRequest, name)

        def counted(self, _original=original, _name=name):
            reads.append(_name)
            return _original(self)

        monkeypatch.setattr(WSGIRequest, name, counted)
    assert client.get("/patients", headers=org_a.headers).status_code == 200
    assert reads == []
    assert client.post("/branches", json={"name": "Read"}, headers=org_a.headers).status_code == 201
    assert reads == ["get_body"]


def test_a_path_parameter_is_validated_once():
    """connexion hands the validator a path item's parameters once per middleware that built it."""
    from middleware.adapter import ParametersValidator

    id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    embed = {"name": "embed", "in": "query", "schema": {"type": "string"}}
    validator = ParametersValidator([embed, id_param, dict(id_param), dict(id_param)], uri_parser=None)
    assert [p["name"] for p in validator.parameters["path"]] == ["id"]
    assert [p["name"] for p in validator.parameters["query"]] == ["embed"]


def test_each_schema_is_compiled_once(client, org_a):
    """connexion hands the validators the same schema objects on every request, so the compiled
    validators stay as many as the spec has schemas, whatever the traffic."""
    for _ in range(3):
        assert client.get("/patients?pageSize=5", headers=org_a.headers).status_code == 200
        assert client.post("/branches", json={"name": "Once"}, headers=org_a.headers).status_code == 201
    kept = len(adapter._compiled)
    for _ in range(20):
        client.get("/patients?pageSize=5", headers=org_a.headers)
        client.post("/branches", json={"name": "Once"}, headers=org_a.headers)
    assert len(adapter._compiled) == kept


def test_the_flask_app_is_called_through_the_bridge(app):
    """connexion's private FlaskASGIApp (``_middleware_app``) holds the a2wsgi adapter we replace."""
    assert isinstance(app._middleware_app.asgi_app, FlaskBridge)


def test_the_oauth_handler_asks_the_token_function_once():
    """connexion's ``_accepts_kwarg`` still takes (function, name) and answers the same each time."""
    from middleware import auth

    handler = adapter._OAuthHandler
    assert handler._accepts_kwarg(auth.token_info, "required_scopes") is False
    assert handler._accepts_kwarg.cache_info().hits + handler._accepts_kwarg.cache_info().misses >= 1


def test_another_framework_version_refuses_to_start(monkeypatch):
    real = adapter.metadata.version
    monkeypatch.setattr(adapter.metadata, "version", lambda name: "9.9.9" if name == "connexion" else real(name))
    with pytest.raises(adapter.UnsupportedFramework, match="connexion 9.9.9 \\(needs 3.3.0\\)"):
        adapter.check_versions()


def test_the_installed_versions_are_the_supported_ones():
    adapter.check_versions()


DOCUMENTED = {
    ("connexion", None), ("connexion.middleware", "MiddlewarePosition"), ("connexion.resolver", "Resolver"),
    ("connexion.context", "context"), ("connexion.context", "operation"), ("connexion.exceptions", "OAuthProblem"),
    ("connexion.exceptions", "OAuthScopeProblem"), ("connexion.exceptions", "ProblemException"),
    ("connexion.jsonifier", "Jsonifier"), ("connexion.lifecycle", "ConnexionResponse"),
}


def test_only_the_adapter_reaches_into_connexion():
    """Outside middleware/adapter.py, connexion is used through its documented names only, and
    a2wsgi not at all."""
    import ast

    offenders = []
    paths = [*config.ROOT.glob("*.py"), *config.ROOT.glob("handlers/*.py"), *config.ROOT.glob("middleware/*.py"),
             *config.ROOT.glob("models/*.py")]
    for path in paths:
        if path.name == "adapter.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("connexion", "a2wsgi"):
                offenders += [f"{path.name}: {node.module}.{alias.name}" for alias in node.names
                              if (node.module, alias.name) not in DOCUMENTED]
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: {alias.name}" for alias in node.names
                              if alias.name.split(".")[0] in ("connexion", "a2wsgi") and (alias.name, None) not in DOCUMENTED]
            elif isinstance(node, ast.Attribute) and node.attr == "_middleware_app":
                offenders.append(f"{path.name}: ._middleware_app")
    assert offenders == []


def _drive(bridge: FlaskBridge, incoming: list[dict]) -> list[dict]:
    """Send one POST made of the ``incoming`` ASGI messages through the bridge; what it sent back."""
    sent = []

    async def receive():
        return incoming.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/echo", "query_string": b"", "headers": [],
             "http_version": "1.1", "server": ("test", 80), "client": ("127.0.0.1", 1), "scheme": "http"}
    asyncio.run(bridge(scope, receive, send))
    return sent


@pytest.mark.parametrize("threads", [0, 2])
def test_body_chunks_and_multi_chunk_answers_are_joined(threads):
    """A body sent in several ASGI messages reaches WSGI whole; an iterable answer is sent as one."""
    def echo(environ, start_response):
        body = environ["wsgi.input"].read()
        start_response("201 Created", [("Content-Type", "text/plain"), ("X-Seen", str(len(body)))])
        return [b"got:", body]

    sent = _drive(FlaskBridge(echo, threads), [{"type": "http.request", "body": b"ab", "more_body": True},
                                               {"type": "http.request", "body": b"cd", "more_body": False}])
    assert sent[0]["status"] == 201 and (b"x-seen", b"4") in sent[0]["headers"]
    assert sent[1] == {"type": "http.response.body", "body": b"got:abcd"}


def test_a_client_gone_mid_body_never_reaches_the_handler():
    called = []

    def app(environ, start_response):
        called.append(environ["wsgi.input"].read())
        start_response("200 OK", [])
        return [b""]

    sent = _drive(FlaskBridge(app, 0), [{"type": "http.request", "body": b'{"name": "Tru', "more_body": True},
                                        {"type": "http.disconnect"}])
    assert called == [] and sent == []


def test_spec_documents_keep_their_refs_and_name_the_mount(app_with):
    """/openapi.json is the spec as written ($refs and all), with servers saying where the API
    answers: behind a proxy that mounts it under a prefix, that prefix."""
    import json

    import yaml

    written = (ROOT / "spec" / "openapi.yaml").read_text()
    refs = written.count("$ref")
    app = app_with()
    served = app.test_client().get("/openapi.json")
    assert json.dumps(served.json()).count('"$ref"') == refs > 1000
    assert served.json()["servers"] == [{"url": "/"}]
    assert served.json()["components"] == yaml.safe_load(written)["components"]
    behind_proxy = app.test_client(root_path="/clinic").get("/openapi.yaml")
    assert yaml.safe_load(behind_proxy.text)["servers"] == [{"url": "/clinic"}]


def _counting_instances(monkeypatch, cls) -> list:
    made = []
    original = cls.__init__

    def counted(self, *args, **kwargs):
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", counted)
    return made


def test_request_validators_are_built_once_per_operation(client, org_a, monkeypatch):
    """connexion built a parameter validator (and a URI parser, and a body validator) for every
    request; adapter.PreparedValidation builds them once. Answers stay connexion's: a body of a
    media type the operation does not take is refused, a missing one is still required."""
    built = _counting_instances(monkeypatch, adapter.ParametersValidator)
    body_built = _counting_instances(monkeypatch, adapter.BodyValidator)
    for number in range(3):
        created = client.post("/suppliers", json={"name": f"Prepared {number}"}, headers=org_a.headers)
        assert created.status_code == 201, created.text
        assert client.get(f"/suppliers/{created.json()['data']['id']}", headers=org_a.headers).status_code == 200
    assert len(built) <= 2 and len(body_built) <= 1
    wrong = client.post("/suppliers", content=b"name=x", headers={**org_a.headers, "Content-Type": "text/plain"})
    assert wrong.status_code == 415
    missing = client.post("/suppliers", headers={**org_a.headers, "Content-Type": "application/json"})
    assert missing.status_code == 400 and error_of(missing)["code"] in ("VALIDATION_ERROR", "MALFORMED_REQUEST")
