def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert client.get("/openapi.json").json()["info"]["title"] == "lorifold"


def test_readyz_reports_a_schema_behind_head(client, services):
    from registry import migrate

    migrate.downgrade(services.settings.resolved_database_url(), "base")
    try:
        r = client.get("/readyz")
        assert r.status_code == 503 and "lorifold migrate" in r.json()["detail"]
    finally:
        migrate.upgrade(services.settings.resolved_database_url())
