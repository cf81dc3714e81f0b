"""A realistic, deterministic demo catalog: the same ``seed`` always gives the same shop."""

from __future__ import annotations

import random
from dataclasses import dataclass

from django.db import transaction
from django.utils.text import slugify

from apps.catalog.models import Category, Product, ProductImage, Sku
from apps.catalog.services import catalog_changed, categories_changed

# Root category → children → (product nouns, variant attribute, variant values, price band €).
TREE: dict[str, dict[str, tuple[list[str], str, list[str], tuple[int, int]]]] = {
    "Electronics": {
        "Phones": (
            ["Phone", "Smartphone", "Phone Case", "Charger"],
            "storage",
            ["64 GB", "128 GB", "256 GB"],
            (19, 899),
        ),
        "Laptops": (
            ["Laptop", "Ultrabook", "Laptop Stand", "Dock"],
            "memory",
            ["8 GB", "16 GB", "32 GB"],
            (39, 1999),
        ),
        "Audio": (
            ["Headphones", "Earbuds", "Speaker", "Soundbar"],
            "color",
            ["black", "white", "blue"],
            (19, 499),
        ),
    },
    "Home & Kitchen": {
        "Cookware": (
            ["Frying Pan", "Saucepan", "Dutch Oven", "Wok"],
            "size",
            ["20 cm", "24 cm", "28 cm"],
            (15, 249),
        ),
        "Furniture": (
            ["Desk Chair", "Bookshelf", "Side Table", "Sofa"],
            "color",
            ["oak", "walnut", "white"],
            (49, 1299),
        ),
        "Lighting": (
            ["Desk Lamp", "Floor Lamp", "Pendant Light", "LED Strip"],
            "color",
            ["warm", "neutral", "cool"],
            (12, 299),
        ),
    },
    "Fashion": {
        "Men": (
            ["T-Shirt", "Hoodie", "Chinos", "Jacket"],
            "size",
            ["S", "M", "L", "XL"],
            (15, 249),
        ),
        "Women": (["Dress", "Blouse", "Jeans", "Coat"], "size", ["XS", "S", "M", "L"], (19, 299)),
        "Shoes": (
            ["Sneakers", "Boots", "Loafers", "Sandals"],
            "size",
            ["38", "40", "42", "44"],
            (29, 249),
        ),
    },
    "Sports & Outdoors": {
        "Fitness": (
            ["Yoga Mat", "Dumbbell Set", "Kettlebell", "Resistance Band"],
            "weight",
            ["light", "medium", "heavy"],
            (9, 199),
        ),
        "Camping": (
            ["Tent", "Sleeping Bag", "Camping Stove", "Headlamp"],
            "capacity",
            ["1 person", "2 people", "4 people"],
            (15, 499),
        ),
        "Cycling": (
            ["Bike Helmet", "Bike Light", "Cycling Jersey", "Bike Lock"],
            "size",
            ["S", "M", "L"],
            (12, 199),
        ),
    },
    "Books & Media": {
        "Fiction": (
            ["Novel", "Short Stories", "Thriller", "Fantasy Saga"],
            "format",
            ["paperback", "hardcover", "e-book"],
            (6, 39),
        ),
        "Non-fiction": (
            ["Cookbook", "Biography", "History", "Field Guide"],
            "format",
            ["paperback", "hardcover"],
            (8, 49),
        ),
        "Music": (
            ["Vinyl Record", "CD Album", "Songbook", "Box Set"],
            "edition",
            ["standard", "deluxe"],
            (9, 129),
        ),
    },
}
ADJECTIVES = [
    "Aurora",
    "Nimbus",
    "Summit",
    "Harbor",
    "Vertex",
    "Cobalt",
    "Ember",
    "Linden",
    "Atlas",
    "Nova",
    "Meridian",
    "Pioneer",
    "Quartz",
    "Solstice",
    "Tidal",
    "Willow",
    "Zenith",
    "Boreal",
    "Cascade",
    "Drift",
    "Evergreen",
    "Fjord",
    "Granite",
    "Horizon",
]
QUALITIES = ["Classic", "Pro", "Lite", "Max", "Plus", "Air", "Essential", "Studio", "Sport", "Mini"]
# Which placeholder pictures (static/img/products/p<N>.svg) suit each leaf category.
LEAF_IMAGES = {
    "Phones": [10],
    "Laptops": [10, 0],
    "Audio": [4, 3],
    "Cookware": [6],
    "Furniture": [9, 1],
    "Lighting": [8],
    "Men": [11, 0],
    "Women": [1, 0],
    "Shoes": [11],
    "Fitness": [5, 0],
    "Camping": [7],
    "Cycling": [5, 7],
    "Fiction": [2],
    "Non-fiction": [2],
    "Music": [3],
}


@dataclass
class SeedResult:
    categories_created: int
    products_created: int
    products_total: int
    skus_created: dict[int, int]  # new SKU id → units to receive


def _leaf_plan() -> list[tuple[str, str, tuple[list[str], str, list[str], tuple[int, int]]]]:
    return [(root, leaf, spec) for root, leaves in TREE.items() for leaf, spec in leaves.items()]


@transaction.atomic(using="default")
def demo_catalog_seed(*, products: int, seed: int) -> SeedResult:
    """Create the demo tree and ``products`` products (with SKUs and images) that do not exist
    yet. Idempotent: product slugs and SKU codes are derived from the seed and the index."""
    rng = random.Random(seed)  # noqa: S311 - demo data, not security
    categories_created = 0
    leaves: list[tuple[Category, tuple[list[str], str, list[str], tuple[int, int]]]] = []
    for root_position, (root_name, children) in enumerate(TREE.items()):
        root, created = Category.objects.get_or_create(
            slug=slugify(root_name),
            defaults={"name": root_name, "position": root_position},
        )
        categories_created += created
        for position, (leaf_name, spec) in enumerate(children.items()):
            leaf, created = Category.objects.get_or_create(
                slug=slugify(f"{root_name} {leaf_name}"),
                defaults={"name": leaf_name, "parent": root, "position": position},
            )
            categories_created += created
            leaves.append((leaf, spec))

    existing = set(Product.objects.filter(slug__startswith="demo-").values_list("slug", flat=True))
    new_products, new_skus, new_images, units = [], [], [], []
    for index in range(products):
        leaf, (nouns, attribute, values, (low, high)) = leaves[index % len(leaves)]
        name = f"{rng.choice(ADJECTIVES)} {rng.choice(QUALITIES)} {rng.choice(nouns)}"
        slug = f"demo-{index:05d}-{slugify(name)}"[:220]
        base_price = rng.randint(low, high) * 100 + rng.choice([0, 49, 90, 95, 99])
        variant_count = rng.randint(1, min(4, len(values)))
        stock_levels = [rng.choice([0, 3, 5, 12, 25, 50, 100, 200]) for _ in range(variant_count)]
        hotness = int(rng.paretovariate(1.2) * 10)
        image = rng.choice(LEAF_IMAGES.get(leaf.name, [0]))
        if slug in existing:
            continue
        product = Product(
            category=leaf,
            name=name,
            slug=slug,
            description=(
                f"The {name} is part of our {leaf.name.lower()} range. "
                f"Built to last, tested by our team, and backed by a two-year warranty.\n\n"
                f"Choose the {attribute} that suits you."
            ),
            hotness=hotness,
        )
        new_products.append(product)
        for variant in range(variant_count):
            value = values[variant]
            new_skus.append(
                (
                    product,
                    Sku(
                        code=f"DEMO-{index:05d}-{variant}",
                        attributes={attribute: value},
                        price=base_price + variant * 500,
                        currency="EUR",
                    ),
                )
            )
            units.append(stock_levels[variant])
        new_images.append(
            (product, ProductImage(url=f"/static/img/products/p{image}.svg", alt=name))
        )

    Product.objects.bulk_create(new_products, batch_size=500)
    for product, sku in new_skus:
        sku.product = product
    for product, picture in new_images:
        picture.product = product
    created_skus = Sku.objects.bulk_create([sku for _, sku in new_skus], batch_size=1000)
    ProductImage.objects.bulk_create([picture for _, picture in new_images], batch_size=1000)

    catalog_changed(product_ids=[product.id for product in new_products])
    if categories_created:
        categories_changed()
    return SeedResult(
        categories_created=categories_created,
        products_created=len(new_products),
        products_total=Product.objects.filter(slug__startswith="demo-").count(),
        skus_created={sku.id: quantity for sku, quantity in zip(created_skus, units, strict=True)},
    )
