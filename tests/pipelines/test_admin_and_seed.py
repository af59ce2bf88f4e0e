import pytest

from pipelines.models import Pipeline, PipelineRun, RunAgent
from tests.pipelines.factories import pipeline

pytestmark = pytest.mark.django_db


def test_default_pipeline_is_seeded_on_the_local_model():
    default = Pipeline.objects.get(name="default")
    agents = list(default.agents.filter(enabled=True))
    assert len(agents) == 2 and len({a.system_prompt for a in agents}) == 2
    assert {a.model.name for a in agents} == {"local/smollm2-135m-instruct"}
    assert default.aggregator_model.name == "local/smollm2-135m-instruct"
    assert "{answers}" in default.aggregator_prompt and "{missing}" in default.aggregator_prompt


def test_admin_pages_render(staff_client):
    pipe = pipeline(agents={"a": {}})
    run = PipelineRun.objects.create(pipeline=pipe, message_id="m", message="hi")
    RunAgent.objects.create(run=run, agent_name="a")
    for url in (
        "/admin/pipelines/pipeline/",
        f"/admin/pipelines/pipeline/{pipe.pk}/change/",
        "/admin/pipelines/pipelinerun/",
        f"/admin/pipelines/pipelinerun/{run.pk}/change/",
        "/admin/pipelines/conversation/",
    ):
        response = staff_client.get(url)
        assert response.status_code == 200, url
    # Runs are read-only records.
    assert staff_client.get("/admin/pipelines/pipelinerun/add/").status_code == 403
