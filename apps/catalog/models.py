from __future__ import annotations

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import F, Q

currency_validator = RegexValidator(r"^[A-Z]{3}$", "An ISO 4217 code in capitals, e.g. EUR.")
image_url_validator = RegexValidator(
    r"^(https?://|/)\S+$", "An absolute http(s) URL, or a path on this site starting with /."
)


class Category(models.Model):
    """A node of the category tree (adjacency list; the tree is small and read whole)."""

    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=140, unique=True)
    description = models.TextField(blank=True)
    position = models.PositiveIntegerField(default=0, help_text="Order among its siblings.")
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["position", "name"]
        verbose_name_plural = "categories"
        constraints = [
            models.CheckConstraint(
                condition=~Q(parent=F("id")), name="catalog_category_not_own_parent"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Product(models.Model):
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="products")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=220, unique=True)
    description = models.TextField(blank=True)
    is_active = models.BooleanField(default=True)
    # How hot the product is (recent views and sales, weighted); preheat_cache --top reads it.
    hotness = models.PositiveIntegerField(default=0, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        indexes = [models.Index(fields=["category", "is_active", "name"])]

    def __str__(self) -> str:
        return self.name


class Sku(models.Model):
    """A sellable variant of a product. Price in minor units of ``currency``; no floats."""

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="skus")
    code = models.CharField(max_length=64, unique=True)
    attributes = models.JSONField(default=dict, blank=True, help_text='e.g. {"size": "M"}')
    price = models.BigIntegerField(
        validators=[MinValueValidator(0)], help_text="In minor units (cents)."
    )
    currency = models.CharField(max_length=3, default="EUR", validators=[currency_validator])
    is_active = models.BooleanField(default=True)
    per_user_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Most units one buyer may order across their open and paid orders; "
        "empty means no limit.",
    )

    class Meta:
        ordering = ["product_id", "price", "code"]
        verbose_name = "SKU"
        constraints = [
            models.CheckConstraint(
                condition=Q(price__gte=0), name="catalog_sku_price_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return self.code


class ProductImage(models.Model):
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="images")
    url = models.CharField(max_length=500, validators=[image_url_validator])
    alt = models.CharField(max_length=200, blank=True)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return self.url
