from django.urls import path

from apps.payments import views

urlpatterns = [
    path("orders/<id64:order_id>/pay/", views.order_pay, name="order-pay"),
    # The buyer's cancel refunds a paid order, so it is the payments app's (orders never
    # imports payments); same path and name as ever.
    path("orders/<id64:order_id>/cancel/", views.order_cancel, name="order-cancel"),
    path(
        "orders/<id64:order_id>/refund-requests/",
        views.order_refund_request,
        name="order-refund-request",
    ),
]
