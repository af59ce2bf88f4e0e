from django.db import migrations

from pipelines.seed import seed_pipelines


def forwards(apps, schema_editor):
    seed_pipelines(
        apps.get_model("pipelines", "Pipeline"),
        apps.get_model("pipelines", "Agent"),
        apps.get_model("routing", "ModelRanking"),
    )


class Migration(migrations.Migration):
    dependencies = [("pipelines", "0001_initial"), ("routing", "0002_seed_routing")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
