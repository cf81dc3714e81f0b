from django.contrib.auth import views as auth_views
from django.urls import path

from apps.users import views

urlpatterns = [
    path("register/", views.register, name="storefront-register"),
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="users/login.html", redirect_authenticated_user=True
        ),
        name="storefront-login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="storefront-logout"),
]
