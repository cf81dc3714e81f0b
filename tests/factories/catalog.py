from __future__ import annotations

import factory
from django.utils.text import slugify

from apps.catalog.models import Category, Product, ProductImage, Sku
from apps.inventory.models import Stock


class CategoryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Category

    name = factory.Sequence(lambda n: f"Category {n}")
    slug = factory.LazyAttribute(lambda o: slugify(o.name))


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product

    category = factory.SubFactory(CategoryFactory)
    name = factory.Sequence(lambda n: f"Product {n:04d}")
    slug = factory.LazyAttribute(lambda o: slugify(o.name))
    description = "A fine product."
    hotness = factory.Sequence(lambda n: n)


class SkuFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Sku

    product = factory.SubFactory(ProductFactory)
    code = factory.Sequence(lambda n: f"SKU-{n:05d}")
    attributes = factory.LazyFunction(lambda: {"size": "M"})
    price = 1999
    currency = "EUR"


class ProductImageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ProductImage

    product = factory.SubFactory(ProductFactory)
    url = "/static/img/products/p1.svg"
    alt = "picture"


class StockFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Stock

    sku = factory.SubFactory(SkuFactory)
    received = factory.LazyAttribute(lambda o: o.available)
    available = 10


def product_with_skus(*, skus: int = 1, images: int = 1, stock: int = 10, **kwargs) -> Product:
    """A visible product with ``skus`` stocked SKUs and ``images`` images."""
    product = ProductFactory(**kwargs)
    for i in range(skus):
        StockFactory(sku=SkuFactory(product=product, price=1000 + i * 100), available=stock)
    for _ in range(images):
        ProductImageFactory(product=product)
    return product
