from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import load_settings


def test_healthz_answers_ok(tmp_path):
    app = create_app(load_settings({"data_dir": str(tmp_path)}, environ={}))
    with TestClient(app) as client:
        r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
