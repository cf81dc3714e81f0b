from django.contrib import admin
from django.urls import include, path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.catalog import api as catalog_api
from apps.catalog import pages as catalog_pages
from apps.console import views as console_views
from apps.orders import api as orders_api
from apps.payments import api as payments_api
from apps.users import api as users_api
from shop import health, metrics
from shop.converters import Id64Converter

# <id64:...>: 1..2**63-1, else 404 before any view or query (shop/converters.py). Registered
# before the apps' URL modules below are included, which use it too.
register_converter(Id64Converter, "id64")

admin.site.site_header = "Shop operations"
admin.site.site_title = "Shop admin"

api_v1 = [
    path("auth/register/", users_api.UserRegisterApi.as_view(), name="api-register"),
    path("auth/token/", users_api.UserTokenApi.as_view(), name="api-token"),
    path(
        "products/",
        catalog_pages.shared_api_listing(catalog_api.ProductListApi.as_view()),
        name="api-product-list",
    ),
    path(
        "products/<id64:product_id>/",
        catalog_pages.shared_page(catalog_api.ProductDetailApi.as_view()),
        name="api-product-detail",
    ),
    path("categories/", catalog_api.CategoryListApi.as_view(), name="api-category-list"),
    path("orders/", orders_api.OrderCollectionApi.as_view(), name="api-orders"),
    path("orders/<id64:order_id>/", orders_api.OrderDetailApi.as_view(), name="api-order-detail"),
    path(
        "orders/<id64:order_id>/cancel/",
        payments_api.OrderCancelApi.as_view(),
        name="api-order-cancel",
    ),
    path(
        "orders/<id64:order_id>/payments/",
        payments_api.PaymentCreateApi.as_view(),
        name="api-payment-create",
    ),
    path(
        "orders/<id64:order_id>/refunds/",
        payments_api.RefundCreateApi.as_view(),
        name="api-refund-create",
    ),
    path(
        "orders/<id64:order_id>/refund-requests/",
        payments_api.RefundRequestCreateApi.as_view(),
        name="api-refund-request-create",
    ),
    path("wallet/", payments_api.WalletDetailApi.as_view(), name="api-wallet"),
    path(
        "checkout-tickets/<id64:ticket_id>/",
        orders_api.CheckoutTicketDetailApi.as_view(),
        name="api-checkout-ticket",
    ),
    path(
        "payments/webhooks/<slug:channel>/",
        payments_api.WebhookReceiveApi.as_view(),
        name="api-payment-webhook",
    ),
    path(
        "categories/<str:slug>/",
        catalog_api.CategoryDetailApi.as_view(),
        name="api-category-detail",
    ),
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    # The operators' dashboard lives inside the admin (staff only, the admin's login).
    path(
        "admin/dashboard/",
        admin.site.admin_view(console_views.dashboard_view),
        name="console-dashboard",
    ),
    path(
        "admin/dashboard/switches/<slug:name>/",
        admin.site.admin_view(console_views.switch_flip_view),
        name="console-switch",
    ),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("accounts/", include("apps.users.urls")),
    path("", include("apps.orders.urls")),
    path("", include("apps.payments.urls")),
    path("", include("apps.catalog.urls")),
]

handler400 = "shop.errors.handler400"
handler404 = "shop.errors.handler404"
handler500 = "shop.errors.handler500"
