"""OpenAPI naming for views written as ``<Noun><Verb>Api`` with nested serializers."""

from __future__ import annotations

import re

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers


class ShopAutoSchema(AutoSchema):
    def get_serializer_name(self, serializer: serializers.BaseSerializer, direction: str) -> str:
        """``UserRegisterApi.InputSerializer`` → ``UserRegisterInput``: nested serializers of
        different views never collide on the name ``Input``."""
        qualname = type(serializer).__qualname__
        if "." not in qualname:
            return super().get_serializer_name(serializer, direction)
        outer, inner = qualname.rsplit(".", 2)[-2:]
        return outer.removesuffix("Api") + inner.removesuffix("Serializer")

    def get_operation_id(self) -> str:
        """``ProductListApi`` → ``product_list``: unique, and stable across URL changes. Named
        after the class that defines the handler, so a view combining two operations on one
        path (``OrderCollectionApi``) keeps both names."""
        handler = getattr(self.view, self.method.lower(), None)
        owner = handler.__qualname__.split(".")[0] if handler else type(self.view).__name__
        name = owner.removesuffix("Api")
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
        return snake if self.method in ("GET", "POST") else f"{snake}_{self.method.lower()}"
