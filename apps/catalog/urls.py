from django.urls import path

from apps.catalog import views
from apps.catalog.pages import shared_listing, shared_page

urlpatterns = [
    path("", shared_page(views.home), name="home"),
    path("products/", shared_listing(views.product_list), name="product-list"),
    path(
        "products/<id64:product_id>/",
        shared_page(views.product_detail),
        name="product-detail-short",
    ),
    path(
        "products/<id64:product_id>/<slug:slug>/",
        shared_page(views.product_detail),
        name="product-detail",
    ),
]
