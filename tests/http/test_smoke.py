import httpx

from tests.conftest import ProjectCreds, Server, event


def test_import_then_export_round_trips_values(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    sent = event(big=123456789012345678901234567890, ratio=1.5, flag=True, nested={"a": [1, "x", None]})
    response = client.post("/import", json=[sent], auth=(project.secret, ""))
    assert response.status_code == 200, response.text
    assert response.json() == {"code": 200, "num_records_imported": 1, "status": "OK"}
    [stored] = server.export(project)
    props = stored["properties"]
    assert stored["event"] == "Signed up"
    assert props["time"] == sent["properties"]["time"]
    assert props["distinct_id"] == "user-1"
    assert props["big"] == 123456789012345678901234567890
    assert props["ratio"] == 1.5 and props["flag"] is True
    assert props["nested"] == {"a": [1, "x", None]}
    assert props["$import"] is True
    assert "token" not in props
