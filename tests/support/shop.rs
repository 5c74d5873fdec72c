//! A synthetic shop API with a known ground truth, for API discovery (tests/e2e_discovery.rs):
//! 30 endpoints under `/shop/` with integer, UUID, hex, date, email and slug segments, nested
//! JSON bodies with optional fields, and emails and card numbers in some requests and
//! responses. The test upstream ([`super::upstream`]) answers `/shop/…` with [`answer`].

use serde_json::{json, Value};

/// Every endpoint, as the node's learner must name it (method, template).
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/shop/users"),
    ("POST", "/shop/users"),
    ("GET", "/shop/users/me"),
    ("GET", "/shop/users/{user_id}"),
    ("PUT", "/shop/users/{user_id}"),
    ("DELETE", "/shop/users/{user_id}"),
    ("GET", "/shop/users/{user_id}/orders"),
    ("POST", "/shop/users/{user_id}/orders"),
    ("GET", "/shop/users/{user_id}/orders/{order_id}"),
    ("GET", "/shop/lookup/{lookup_email}"),
    ("GET", "/shop/products"),
    ("GET", "/shop/products/search"),
    ("GET", "/shop/products/{product_id}"),
    ("GET", "/shop/products/{product_id}/reviews"),
    ("POST", "/shop/products/{product_id}/reviews"),
    ("GET", "/shop/categories"),
    ("GET", "/shop/categories/{category_slug}"),
    ("GET", "/shop/categories/{category_slug}/products"),
    ("GET", "/shop/reports/{report_date}"),
    ("GET", "/shop/reports/{report_date}/summary"),
    ("GET", "/shop/invoices/{invoice_id}"),
    ("POST", "/shop/invoices/{invoice_id}/pay"),
    ("GET", "/shop/carts/{cart_id}"),
    ("PATCH", "/shop/carts/{cart_id}"),
    ("DELETE", "/shop/carts/{cart_id}/items/{item_id}"),
    ("GET", "/shop/search"),
    ("GET", "/shop/health"),
    ("GET", "/shop/admin/stats"),
    ("POST", "/shop/auth/login"),
    ("POST", "/shop/auth/logout"),
];

pub const CATEGORIES: &[&str] = &[
    "home-garden",
    "kids-toys",
    "sports-outdoors",
    "office-supplies",
    "pet-care",
    "arts-crafts",
];
pub const PRODUCTS: &[&str] = &["507f1f77bcf86cd799439011", "507f191e810c19729de860ea"];
pub const CARTS: &[&str] = &["a1b2c3d4e5f60718", "0f1e2d3c4b5a6978"];
pub const ORDERS: &[&str] = &[
    "550e8400-e29b-41d4-a716-446655440000",
    "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
];
pub const CARD: &str = "4111111111111111";

fn email(id: u64) -> String {
    format!("user{id}@example.com")
}

/// The requests the test sends: method, path, JSON body (if any), `authorization` and
/// `cookie` headers.
pub fn requests() -> Vec<(&'static str, String, Option<Value>)> {
    let mut out: Vec<(&'static str, String, Option<Value>)> = Vec::new();
    let mut add = |m: &'static str, p: String, b: Option<Value>| out.push((m, p, b));
    add("GET", "/shop/users?page=1&limit=20".into(), None);
    add("GET", "/shop/users".into(), None);
    for id in [1u64, 2, 3] {
        let mut body = json!({
            "name": format!("User {id}"),
            "email": email(id),
            "address": {"city": "Berlin"},
            "tags": ["new", "vip"],
        });
        if id != 2 {
            body["address"]["zip"] = json!("10115");
        }
        add("POST", "/shop/users".into(), Some(body));
    }
    add("GET", "/shop/users/me".into(), None);
    for id in [7u64, 8, 9] {
        add("GET", format!("/shop/users/{id}"), None);
        add("GET", format!("/shop/users/{id}/orders?status=open"), None);
    }
    add(
        "PUT",
        "/shop/users/7".into(),
        Some(json!({"name": "Seven", "newsletter": true})),
    );
    add(
        "PUT",
        "/shop/users/8".into(),
        Some(json!({"name": "Eight", "newsletter": false, "email": email(8)})),
    );
    add("DELETE", "/shop/users/9".into(), None);
    for (i, id) in [7u64, 8].iter().enumerate() {
        let mut items = vec![json!({"sku": "A-1", "qty": 2})];
        if i == 1 {
            items.push(json!({"sku": "B-2", "qty": 1, "note": "gift wrap"}));
        }
        add(
            "POST",
            format!("/shop/users/{id}/orders"),
            Some(json!({"items": items, "payment": {"method": "card", "card": CARD}})),
        );
    }
    for (id, order) in [7u64, 8].iter().zip(ORDERS) {
        add("GET", format!("/shop/users/{id}/orders/{order}"), None);
    }
    add("GET", "/shop/lookup/ada@example.io".into(), None);
    add("GET", "/shop/lookup/bob@example.org".into(), None);
    add("GET", "/shop/products?sort=price".into(), None);
    add("GET", "/shop/products/search?q=lamp&page=2".into(), None);
    for p in PRODUCTS {
        add("GET", format!("/shop/products/{p}"), None);
        add("GET", format!("/shop/products/{p}/reviews"), None);
    }
    add(
        "POST",
        format!("/shop/products/{}/reviews", PRODUCTS[0]),
        Some(json!({"rating": 5, "text": "Great lamp"})),
    );
    add("GET", "/shop/categories".into(), None);
    for c in CATEGORIES {
        add("GET", format!("/shop/categories/{c}"), None);
        add("GET", format!("/shop/categories/{c}/products?page=1"), None);
    }
    for d in ["2026-11-29", "2026-11-30"] {
        add("GET", format!("/shop/reports/{d}"), None);
        add("GET", format!("/shop/reports/{d}/summary"), None);
    }
    for o in ORDERS {
        add("GET", format!("/shop/invoices/{o}"), None);
    }
    add(
        "POST",
        format!("/shop/invoices/{}/pay", ORDERS[0]),
        Some(json!({"amount": 12.5, "currency": "EUR"})),
    );
    for c in CARTS {
        add("GET", format!("/shop/carts/{c}"), None);
    }
    add(
        "PATCH",
        format!("/shop/carts/{}", CARTS[0]),
        Some(json!({"coupon": "WINTER"})),
    );
    add("DELETE", format!("/shop/carts/{}/items/3", CARTS[1]), None);
    add("GET", "/shop/search?q=lamp".into(), None);
    add("GET", "/shop/search?q=desk&in_stock=true".into(), None);
    add("GET", "/shop/health".into(), None);
    add("GET", "/shop/admin/stats".into(), None);
    add(
        "POST",
        "/shop/auth/login".into(),
        Some(json!({"username": "ada", "remember": true})),
    );
    add("POST", "/shop/auth/logout".into(), Some(json!({})));
    out
}

fn user(id: u64) -> Value {
    let mut u = json!({"id": id, "name": format!("User {id}"), "email": email(id), "profile": {"age": 30 + id, "vip": id.is_multiple_of(2)}});
    if id % 2 == 1 {
        u["profile"]["nickname"] = Value::Null;
    }
    u
}

/// The upstream's answer to `method path` (path without its query): status and JSON body.
pub fn answer(method: &str, path: &str) -> (u16, String) {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let id = |s: &str| s.parse::<u64>().unwrap_or(0);
    let v = match (method, segs.as_slice()) {
        ("GET", ["shop", "users"]) => json!({"users": [user(1), user(2)], "total": 2}),
        ("POST", ["shop", "users"]) => {
            return (201, json!({"id": 99, "created": true}).to_string())
        }
        ("GET", ["shop", "users", "me"]) => json!({"id": 1, "name": "Me"}),
        ("GET", ["shop", "users", u]) => user(id(u)),
        ("PUT", ["shop", "users", u]) => json!({"id": id(u), "updated": true}),
        ("DELETE", ["shop", "users", _]) => return (204, String::new()),
        ("GET", ["shop", "users", _, "orders"]) => {
            json!({"orders": [{"id": ORDERS[0], "total": 19.99}]})
        }
        ("POST", ["shop", "users", _, "orders"]) => {
            return (
                201,
                json!({"id": ORDERS[1], "status": "placed"}).to_string(),
            )
        }
        ("GET", ["shop", "users", _, "orders", o]) => {
            json!({"id": o, "items": [{"sku": "A-1", "qty": 2}], "payment": {"method": "card", "card": CARD}})
        }
        ("GET", ["shop", "lookup", e]) => json!({"email": e, "found": true}),
        ("GET", ["shop", "products"]) => json!({"products": [{"id": PRODUCTS[0], "price": 9.5}]}),
        ("GET", ["shop", "products", "search"]) => json!({"results": [], "page": 2}),
        ("GET", ["shop", "products", p]) => {
            json!({"id": p, "name": "Lamp", "price": 9.5, "stock": 3})
        }
        ("GET", ["shop", "products", _, "reviews"]) => {
            json!({"reviews": [{"rating": 5, "text": "ok"}]})
        }
        ("POST", ["shop", "products", _, "reviews"]) => return (201, json!({"id": 1}).to_string()),
        ("GET", ["shop", "categories"]) => json!({"categories": CATEGORIES}),
        ("GET", ["shop", "categories", c]) => json!({"slug": c, "count": 4}),
        ("GET", ["shop", "categories", _, "products"]) => json!({"products": [], "page": 1}),
        ("GET", ["shop", "reports", d]) => json!({"date": d, "orders": 12}),
        ("GET", ["shop", "reports", _, "summary"]) => json!({"revenue": 120.5}),
        ("GET", ["shop", "invoices", i]) => json!({"id": i, "amount": 12.5, "paid": false}),
        ("POST", ["shop", "invoices", _, "pay"]) => json!({"paid": true}),
        ("GET", ["shop", "carts", c]) => json!({"id": c, "items": [{"sku": "A-1", "qty": 1}]}),
        ("PATCH", ["shop", "carts", c]) => json!({"id": c, "coupon": "WINTER"}),
        ("DELETE", ["shop", "carts", _, "items", _]) => return (204, String::new()),
        ("GET", ["shop", "search"]) => json!({"hits": 0}),
        ("GET", ["shop", "health"]) => json!({"ok": true}),
        ("GET", ["shop", "admin", "stats"]) => json!({"users": 3, "orders": 2}),
        ("POST", ["shop", "auth", "login"]) => json!({"ok": true}),
        ("POST", ["shop", "auth", "logout"]) => return (204, String::new()),
        _ => return (404, json!({"error": "no such endpoint"}).to_string()),
    };
    (200, v.to_string())
}
