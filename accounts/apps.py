from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "API keys"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save

        from accounts import schema  # noqa: F401  registers the OpenAPI auth extension
        from accounts.models import ApiKey

        post_save.connect(_key_changed, sender=ApiKey, dispatch_uid="accounts-key-cache-save")
        post_delete.connect(_key_changed, sender=ApiKey, dispatch_uid="accounts-key-cache-del")
        user = get_user_model()
        post_save.connect(_user_changed, sender=user, dispatch_uid="accounts-key-cache-user")
        post_delete.connect(_user_changed, sender=user, dispatch_uid="accounts-key-cache-udel")


def _key_changed(sender, instance, **kwargs) -> None:
    """A saved or deleted key leaves this process's key cache at once (other processes
    drop it within accounts.selectors.KEY_CACHE_SECONDS)."""
    from accounts.selectors import api_key_cache_forget

    api_key_cache_forget(instance.key_hash)


def _user_changed(sender, instance, **kwargs) -> None:
    """A user's keys carry the user (is_active is checked per request): forget them all."""
    from accounts.selectors import api_key_cache_forget

    api_key_cache_forget()
