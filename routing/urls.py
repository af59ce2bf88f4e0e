from django.urls import path

from routing.views.classify import (
    ClassificationDetail,
    ClassificationFeedback,
    ClassificationList,
    ClassifyView,
)
from routing.views.embeddings import EmbeddingDetail, EmbeddingList
from routing.views.generate import generate, models_select
from routing.views.generations import GenerationCancel, GenerationDetail, GenerationList
from routing.views.rankings import ModelRankingList
from routing.views.usage import UsageView

urlpatterns = [
    path("model-rankings", ModelRankingList.as_view(), name="model-rankings"),
    path("classify", ClassifyView.as_view(), name="classify"),
    path("classifications", ClassificationList.as_view(), name="classification-list"),
    path("classifications/<int:pk>", ClassificationDetail.as_view(), name="classification-detail"),
    path(
        "classifications/<int:pk>/feedback",
        ClassificationFeedback.as_view(),
        name="classification-feedback",
    ),
    path("models/select", models_select, name="models-select"),
    path("generate", generate, name="generate"),
    path("generations", GenerationList.as_view(), name="generation-list"),
    path("generations/<int:pk>", GenerationDetail.as_view(), name="generation-detail"),
    path("usage", UsageView.as_view(), name="usage"),
    path("generations/<int:pk>/cancel", GenerationCancel.as_view(), name="generation-cancel"),
    path("embeddings", EmbeddingList.as_view(), name="embedding-list"),
    path("embeddings/<int:pk>", EmbeddingDetail.as_view(), name="embedding-detail"),
]
