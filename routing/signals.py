"""Routing-table edits invalidate every process's classifier caches."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from routing.classifiers.cache import routes_changed
from routing.models import CategoryRoute


@receiver(post_save, sender=CategoryRoute, dispatch_uid="routing_route_saved")
@receiver(post_delete, sender=CategoryRoute, dispatch_uid="routing_route_deleted")
def category_route_changed(sender, **kwargs) -> None:
    routes_changed()
