"""Routing-table edits (routes, examples, trained heads, adaptations) invalidate every process's
classifier caches and cached routing table."""

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from routing.classifiers.cache import routes_changed
from routing.models import (
    CategoryExample,
    CategoryRoute,
    ModelRanking,
    RouterAdaptation,
    RouterHead,
)


def invalidate() -> None:
    """Now (this process sees its own edit at once) and again on commit: another process
    that rebuilt its table between the two, from the uncommitted state, rebuilds again."""
    routes_changed()
    transaction.on_commit(routes_changed)


@receiver(post_save, sender=CategoryRoute, dispatch_uid="routing_route_saved")
@receiver(post_delete, sender=CategoryRoute, dispatch_uid="routing_route_deleted")
def category_route_changed(sender, **kwargs) -> None:
    invalidate()


@receiver(post_save, sender=CategoryExample, dispatch_uid="routing_example_saved")
@receiver(post_delete, sender=CategoryExample, dispatch_uid="routing_example_deleted")
@receiver(post_save, sender=RouterHead, dispatch_uid="routing_head_saved")
@receiver(post_delete, sender=RouterHead, dispatch_uid="routing_head_deleted")
@receiver(post_save, sender=RouterAdaptation, dispatch_uid="routing_adaptation_saved")
@receiver(post_delete, sender=RouterAdaptation, dispatch_uid="routing_adaptation_deleted")
def routing_data_changed(sender, **kwargs) -> None:
    invalidate()


@receiver(post_save, sender=ModelRanking, dispatch_uid="routing_model_saved")
@receiver(post_delete, sender=ModelRanking, dispatch_uid="routing_model_deleted")
def model_changed(sender, **kwargs) -> None:
    """Every cached model leaves this process's cache (a rename changes its key)."""
    from routing.services.models import models_cache

    models_cache.forget()
