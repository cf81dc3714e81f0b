"""The operators' dashboard (staff only, inside the admin) and its switch buttons."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.console.charts import line_chart
from apps.console.selectors import dashboard
from shop.runtime import switch_set

# The page reloads itself this often (seconds): live enough for a sale, cheap for the shop.
REFRESH_SECONDS = 10


def dashboard_view(request: HttpRequest) -> HttpResponse:
    sections = dashboard()
    charts = sections["charts"].value
    context = {
        **admin.site.each_context(request),
        "title": "Operator dashboard",
        "refresh": REFRESH_SECONDS,
        "sections": sections,
        "queue_bound": settings.CHECKOUT_QUEUE_BOUND,
        "dlq": settings.ORDER_PROCESSING_DLQ,
        "dlq_depth": (sections["queues"].value or {}).get(settings.ORDER_PROCESSING_DLQ),
        "can_switch": request.user.has_perm("shop.change_switch"),
    }
    if charts is not None:
        context["success_chart"] = line_chart(
            minutes=charts.minutes,
            values=charts.payment_success,
            y_max=1.0,
            y_label="Payment success rate per minute",
            percent=True,
        )
        context["checkout_chart"] = line_chart(
            minutes=charts.minutes,
            values=charts.checkouts,
            y_max=max(charts.checkouts) or 1,
            y_label="Orders placed per minute",
            colour="#2b5ea7",
        )
        context["checkouts_last_hour"] = sum(charts.checkouts)
        context["payments_last_hour"] = sum(charts.payments)
    return render(request, "console/dashboard.html", context)


@require_POST
def switch_flip_view(request: HttpRequest, name: str) -> HttpResponse:
    if not request.user.has_perm("shop.change_switch"):
        raise PermissionDenied
    on = request.POST.get("on") == "1"
    try:
        switch_set(name=name, on=on, note=f"dashboard: {request.user.get_username()}")
    except KeyError:
        messages.error(request, f"There is no switch {name!r}.")
    else:
        messages.success(request, f"{name} is now {'on' if on else 'off'} (every process within "
                         f"{settings.RUNTIME_CONFIG_TTL:g} s).")  # fmt: skip
    return redirect("console-dashboard")
