from django.urls import path

from apps.catalog import views

urlpatterns = [
    path("", views.home, name="home"),
    path("products/", views.product_list, name="product-list"),
    path("products/<int:product_id>/", views.product_detail, name="product-detail-short"),
    path("products/<int:product_id>/<slug:slug>/", views.product_detail, name="product-detail"),
]
