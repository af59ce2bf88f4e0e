from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key; the key is printed once, as the last line of stdout."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--user", help="username to own the key")
        parser.add_argument("--rpm", type=int, help="requests per minute")
        parser.add_argument("--tpm", type=int, help="tokens per minute")

    def handle(self, *args, name, user=None, rpm=None, tpm=None, **options):
        owner = None
        if user:
            owner = get_user_model().objects.filter(username=user).first()
            if owner is None:
                raise CommandError(f"No user named {user!r}.")
        key, raw = ApiKey.issue(
            name=name, user=owner, requests_per_minute=rpm, tokens_per_minute=tpm
        )
        self.stdout.write(f"Created API key {key.prefix}… named {name!r}. It is shown only once:")
        self.stdout.write(raw)
