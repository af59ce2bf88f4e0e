from django.apps import AppConfig


class PipelinesConfig(AppConfig):
    name = "pipelines"
    verbose_name = "Fan-out pipelines"

    def ready(self) -> None:
        from pipelines.websocket import process_over_websocket
        from routing.consumers import ws_handler

        ws_handler("process", background=True)(process_over_websocket)
