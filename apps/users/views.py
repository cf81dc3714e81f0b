from __future__ import annotations

from django import forms
from django.contrib.auth import login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme

from apps.users.exceptions import RegistrationInvalid
from apps.users.services import user_register

# The backend a fresh account's session is bound to (it must be in AUTHENTICATION_BACKENDS).
SESSION_BACKEND = "apps.users.backends.CanonicalUsernameBackend"


class RegisterForm(forms.Form):
    username = forms.CharField(max_length=150)
    email = forms.EmailField(required=False)
    password = forms.CharField(widget=forms.PasswordInput, strip=False, max_length=128)
    password_again = forms.CharField(
        widget=forms.PasswordInput, strip=False, max_length=128, label="Password (again)"
    )

    def clean(self) -> dict:
        data = super().clean()
        if data.get("password") and data.get("password") != data.get("password_again"):
            self.add_error("password_again", "The two passwords differ.")
        return data


def _next_url(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return "/"


def register(request: HttpRequest) -> HttpResponse:
    form = RegisterForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user, _ = user_register(
                username=form.cleaned_data["username"],
                password=form.cleaned_data["password"],
                email=form.cleaned_data["email"],
            )
        except RegistrationInvalid as exc:
            for field, messages in exc.extra.get("fields", {}).items():
                for message in messages:
                    form.add_error(field if field in form.fields else None, message)
        else:
            login(request, user, backend=SESSION_BACKEND)
            return redirect(_next_url(request))
    return render(request, "users/register.html", {"form": form, "next": _next_url(request)})
