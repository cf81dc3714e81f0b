from django.urls import path

from apps.payments import views

urlpatterns = [
    path("orders/<id64:order_id>/pay/", views.order_pay, name="order-pay"),
]
