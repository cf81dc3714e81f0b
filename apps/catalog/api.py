from __future__ import annotations

import contextlib
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param
from rest_framework.views import APIView

from apps.catalog import selectors
from apps.catalog.exceptions import CategoryNotFound, ProductNotFound
from shop.parsers import PageField, StrictIntegerField
from shop.parsing import ParseRefused, parse_id


class CategoryRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    slug = serializers.CharField()


class SkuOutputSerializer(serializers.Serializer):
    code = serializers.CharField()
    attributes = serializers.DictField()
    price = serializers.IntegerField(help_text="Minor units (cents).")
    currency = serializers.CharField()
    available = serializers.IntegerField(
        allow_null=True, help_text="Units in stock; null while stock cannot be read."
    )


class ImageOutputSerializer(serializers.Serializer):
    url = serializers.CharField()
    alt = serializers.CharField()


class ProductSummarySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    slug = serializers.CharField()
    category = CategoryRefSerializer()
    image = ImageOutputSerializer(allow_null=True)
    skus = SkuOutputSerializer(many=True)
    price_min = serializers.IntegerField(allow_null=True)
    currency = serializers.CharField(allow_null=True)
    available = serializers.IntegerField(allow_null=True)


class ProductDetailSerializer(ProductSummarySerializer):
    description = serializers.CharField()
    images = ImageOutputSerializer(many=True)
    breadcrumbs = CategoryRefSerializer(many=True)
    price_max = serializers.IntegerField(allow_null=True)


class PaginatedProductsSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = ProductSummarySerializer(many=True)


def _category_id(value: str) -> int:
    """A category filter may be a slug or an id; unknown or hidden ones are 404."""
    node = None
    with contextlib.suppress(ParseRefused):  # not an id: a slug
        node = selectors.category_tree()["nodes"].get(parse_id(value))
    node = node if node is not None and node["visible"] else None
    if node is None:
        node = selectors.category_get_by_slug(value)
    if node is None:
        raise CategoryNotFound()
    return node["id"]


class ProductListApi(APIView):
    """Visible products, paginated; filter by category (slug or id, subtree) and name. A page
    that is not a whole number 1..2**63-1 is 400 ``validation_error``; one past the last page
    is 404 ``not_found`` (docs/input-limits.md)."""

    permission_classes = [AllowAny]

    class FilterSerializer(serializers.Serializer):
        category = serializers.CharField(required=False, max_length=140)
        q = serializers.CharField(required=False, allow_blank=True, max_length=100)
        sort = serializers.ChoiceField(
            choices=list(selectors.SORTS), default=selectors.DEFAULT_SORT
        )
        page = PageField()
        page_size = StrictIntegerField(
            min_value=1, max_value=settings.API_MAX_PAGE_SIZE, required=False
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("category", OpenApiTypes.STR, description="Category slug or id"),
            OpenApiParameter("q", OpenApiTypes.STR, description="Search in product names"),
            OpenApiParameter("sort", OpenApiTypes.STR, enum=list(selectors.SORTS)),
            OpenApiParameter("page", OpenApiTypes.INT),
            OpenApiParameter("page_size", OpenApiTypes.INT),
        ],
        responses={200: PaginatedProductsSerializer},
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        data: dict[str, Any] = filters.validated_data
        category_id = _category_id(data["category"]) if data.get("category") else None
        page = selectors.product_page(
            category_id=category_id,
            query=data.get("q", ""),
            sort=data["sort"],
            page=data["page"],
            page_size=data.get("page_size"),
        )
        url = request.build_absolute_uri()
        body = {
            "count": page.count,
            "next": replace_query_param(url, "page", page.page + 1) if page.has_next else None,
            "previous": (
                None
                if not page.has_previous
                else replace_query_param(url, "page", page.page - 1)
                if page.page > 2
                else remove_query_param(url, "page")
            ),
            "results": page.items,
        }
        return Response(PaginatedProductsSerializer(body).data)


class ProductDetailApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses={200: ProductDetailSerializer})
    def get(self, request: Request, product_id: int) -> Response:
        document = selectors.product_detail(product_id)
        if document is None:
            raise ProductNotFound()
        return Response(ProductDetailSerializer(document).data)


class CategoryOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    slug = serializers.CharField()
    parent = serializers.IntegerField(source="parent_id", allow_null=True)
    description = serializers.CharField()
    children = serializers.ListField(child=serializers.IntegerField())


def _visible_children(node: dict[str, Any], nodes: dict[int, dict[str, Any]]) -> dict[str, Any]:
    return {**node, "children": [c for c in node["children"] if nodes[c]["visible"]]}


class CategoryListApi(APIView):
    """Every visible category, parents before children; `children` holds ids."""

    permission_classes = [AllowAny]

    @extend_schema(responses={200: CategoryOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        tree = selectors.category_tree()
        nodes = tree["nodes"]
        ordered, stack = [], list(reversed(tree["roots"]))
        while stack:
            node = nodes[stack.pop()]
            if node["visible"]:
                ordered.append(_visible_children(node, nodes))
                stack.extend(reversed(node["children"]))
        return Response(CategoryOutputSerializer(ordered, many=True).data)


class CategoryDetailApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses={200: CategoryOutputSerializer})
    def get(self, request: Request, slug: str) -> Response:
        category_id = _category_id(slug)
        nodes = selectors.category_tree()["nodes"]
        return Response(CategoryOutputSerializer(_visible_children(nodes[category_id], nodes)).data)
