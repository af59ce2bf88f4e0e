import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from accounts.models import ApiKey

CREDENTIALS_FILE = "local-credentials.txt"


class Command(BaseCommand):
    help = (
        "Local set-up for `make serve`: seed routing, ensure a staff user and an API key, "
        "print how to log in and a curl example. Idempotent."
    )

    def add_arguments(self, parser):
        parser.add_argument("--port", default=os.environ.get("PORT", "8000"))

    def handle(self, *args, port, **options):
        call_command("seed_routing", verbosity=0)
        path = settings.VAR_DIR / CREDENTIALS_FILE
        saved = (
            dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
            if path.exists()
            else {}
        )
        user_model = get_user_model()
        username = os.environ.get("TOKENFLOW_ADMIN_USER", "admin")
        password = saved.get("password") or os.environ.get("TOKENFLOW_ADMIN_PASSWORD")
        user = user_model.objects.filter(username=username).first()
        if user is None or not password:
            password = password or secrets.token_urlsafe(12)
            user = user or user_model(username=username, email=f"{username}@localhost")
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
        key = saved.get("api_key")
        if not key or not ApiKey.objects.active().filter(prefix=key[:10]).exists():
            _, key = ApiKey.issue(name="local (make serve)", user=user)
        path.write_text(f"username={username}\npassword={password}\napi_key={key}\n")
        path.chmod(0o600)
        base = f"http://127.0.0.1:{port}"
        self.stdout.write(
            f"\nTokenFlow is starting on {base}\n"
            f"  open:    {base}/  (playground; dashboard at {base}/dashboard/)\n"
            f"  login:   user {username!r}, password {password!r}  (admin: {base}/admin/)\n"
            f"  docs:    {base}/api/docs/\n"
            f"  API key: {key}   (saved in {path})\n"
            f'  CLI:     .venv/bin/tokenflow ask --model auto "What is an AI model?"\n\n'
            "Try it:\n"
            f"  curl -N {base}/api/generate -H 'Authorization: Bearer {key}' "
            "-H 'Content-Type: application/json' "
            '-d \'{"model": "local/smollm2-135m-instruct", '
            '"prompt": "What is the capital of France?"}\'\n'
        )
