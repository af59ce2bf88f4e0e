from decimal import Decimal, InvalidOperation

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts.models import ApiKey, BudgetPeriod


def _usd(option: str, value: str | None) -> Decimal | None:
    """A budget in USD: a finite number >= 0 (CommandError naming the option otherwise)."""
    if value is None:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise CommandError(f"{option} must be a number of USD, not {value!r}.") from None
    if not amount.is_finite() or amount < 0 or amount >= Decimal("1e8"):
        raise CommandError(f"{option} must be between 0 and 99999999.99 USD, not {value}.")
    return amount


class Command(BaseCommand):
    help = "Create an API key; the key is printed once, as the last line of stdout."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--user", help="username to own the key")
        parser.add_argument("--rpm", type=int, help="requests per minute")
        parser.add_argument("--tpm", type=int, help="tokens per minute")
        parser.add_argument("--max-budget", help="spend limit in USD per budget period")
        parser.add_argument(
            "--budget-period", default=BudgetPeriod.MONTH, help="day, month (default) or total"
        )
        parser.add_argument("--soft-budget", help="USD at which a warning is logged")

    def handle(
        self,
        *args,
        name,
        user=None,
        rpm=None,
        tpm=None,
        max_budget=None,
        budget_period=BudgetPeriod.MONTH,
        soft_budget=None,
        **options,
    ):
        owner = None
        if user:
            owner = get_user_model().objects.filter(username=user).first()
            if owner is None:
                raise CommandError(f"No user named {user!r}.")
        if budget_period not in BudgetPeriod.values:
            raise CommandError(
                f"--budget-period must be one of {', '.join(BudgetPeriod.values)}, "
                f"not {budget_period!r}."
            )
        key, raw = ApiKey.issue(
            name=name,
            user=owner,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            max_budget_usd=_usd("--max-budget", max_budget),
            budget_period=budget_period,
            soft_budget_usd=_usd("--soft-budget", soft_budget),
        )
        self.stdout.write(f"Created API key {key.prefix}… named {name!r}. It is shown only once:")
        self.stdout.write(raw)
