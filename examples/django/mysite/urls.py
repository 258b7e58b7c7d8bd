"""URLs of the example project."""

from django.urls import path
from shop import views

urlpatterns = [
    path("orders/<int:order_id>/receipt", views.send_receipt_view),
    path("results/<str:result_id>", views.result_view),
]
