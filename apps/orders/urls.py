from django.urls import path

from apps.orders import views

urlpatterns = [
    path("cart/", views.cart_view, name="cart"),
    path("cart/add/", views.cart_add, name="cart-add"),
    path("cart/update/", views.cart_update, name="cart-update"),
    path("checkout/", views.checkout, name="checkout"),
    path("checkout/tickets/<id64:ticket_id>/", views.checkout_ticket, name="checkout-ticket"),
    path("orders/", views.order_list, name="order-list"),
    path("orders/<id64:order_id>/", views.order_detail, name="order-detail"),
]
