from django.db import migrations

from routing.seed import seed_routing


def forwards(apps, schema_editor):
    seed_routing(apps.get_model("routing", "ModelRanking"), apps.get_model("routing", "CategoryRoute"))


class Migration(migrations.Migration):
    dependencies = [("routing", "0001_initial")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
